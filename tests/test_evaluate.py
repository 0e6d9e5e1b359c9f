"""Evaluation entry point: per-slice metrics and summaries of a run, comparisons of runs with paired tests."""
import json
import math
import shutil

import pandas as pd
import pytest

from mudiff.evaluation.evaluate import compare_runs, evaluate_run
from mudiff.train import Trainer


@pytest.fixture
def mudiff_run(tiny_run, tmp_path):
    """A writable copy of the session's tiny MU-Diff run (evaluation writes into the run folder)."""
    return shutil.copytree(tiny_run, tmp_path / "mudiff")


@pytest.fixture
def copy_run(make_config, tmp_path):
    run = tmp_path / "copy"
    Trainer(make_config(model={"method": "copy_source"}, train={"max_steps": 3, "val_slices": 0}), run).fit()
    return run


def test_evaluate_run_writes_slices_and_summary(mudiff_run):
    summary = evaluate_run(mudiff_run, split="test", batch_size=4, progress=False)
    eval_dir = mudiff_run / "eval"
    first_line = (eval_dir / "test_slices.csv").read_text().splitlines()[0]
    assert first_line.startswith("# metrics: float protocol")
    slices = pd.read_csv(eval_dir / "test_slices.csv", comment="#")
    assert set(slices["output"]) == {"x_p1", "x_p2", "mutual"} and len(slices) == 3 * summary["slices"]
    assert slices["psnr_B"].map(math.isfinite).all() and slices["ssim_B"].between(-1, 1).all()
    assert slices["psnr_T"].notna().any()  # the tumour phantom has lesion slices

    assert json.loads((eval_dir / "test_summary.json").read_text()) == summary
    assert summary["protocol"] == "float" and summary["mask_head"] == "fixed" and summary["weights"] == "ema"
    assert summary["checkpoint_step"] == 2 and summary["subjects"] == 1
    brain = summary["outputs"]["mutual"]["by_slice"]["psnr_B"]
    assert math.isfinite(brain["mean"]) and brain["n"] == summary["slices"]
    markdown = (eval_dir / "test_summary.md").read_text()
    assert "float protocol" in markdown and "critic mask head fixed" in markdown and "| mutual |" in markdown
    assert "last checkpoint (step 2, ema weights)" in markdown


def test_evaluate_run_on_other_data_writes_apart_and_checks_their_preparation(mudiff_run, phantom_dir, tmp_path,
                                                                              monkeypatch):
    from mudiff.data.prepare import prepare_dataset
    from mudiff.evaluation import evaluate
    from mudiff.evaluation.evaluate import eval_dir, evaluate_runs, load_slice_metrics

    own = evaluate_run(mudiff_run, split="test", progress=False)
    other = tmp_path / "other"  # the same phantom, every subject in the test split, prepared as the run's data
    prepare_dataset(phantom_dir, other, size=32, slices=6, split=(0, 0, 1))
    summary = evaluate_run(mudiff_run, split="test", progress=False, data_root=other)
    out = eval_dir(mudiff_run, other)
    assert out == mudiff_run / "eval" / "external" / "other"
    assert json.loads((out / "test_summary.json").read_text()) == summary
    assert summary["data_root"] == str(other) and summary["subjects"] == 5 and own["subjects"] == 1
    assert json.loads((mudiff_run / "eval" / "test_summary.json").read_text()) == own  # its own eval untouched
    assert len(load_slice_metrics(mudiff_run, "test", data_root=other)) == summary["slices"] == 30
    with pytest.raises(ValueError, match="another folder of the same name"):  # eval/external/other is not its
        load_slice_metrics(mudiff_run, "test", data_root=tmp_path / "elsewhere" / "other")
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: pytest.fail("scored again"))
    frames = evaluate_runs({"m": mudiff_run}, data_root=other, progress=False)  # its files are current: read back
    pd.testing.assert_frame_equal(frames["m"], load_slice_metrics(mudiff_run, "test", data_root=other))
    monkeypatch.undo()
    from mudiff import cli

    assert cli.main(["evaluate", "--run-dir", str(mudiff_run), "--data-root", str(other), "--max-slices", "6"]) == 0
    assert json.loads((out / "test_summary.json").read_text())["slices"] == 6  # the CLI scores the other data
    for name, options in (("zscore", {"normalization": "zscore_outside_lesion"}), ("few", {"slices": 4})):
        prepare_dataset(phantom_dir, tmp_path / name, size=32, split=(0, 0, 1), **{"slices": 6, **options})
        with pytest.raises(ValueError, match="prepared differently from the run's own data"):
            evaluate_run(mudiff_run, data_root=tmp_path / name, progress=False)


def test_the_best_checkpoint_is_scored_apart_from_the_last(make_config, mudiff_run, tmp_path):
    from mudiff.evaluation.evaluate import evaluate_runs

    with pytest.raises(FileNotFoundError, match="keeps no best checkpoint.*train.keep_best"):
        evaluate_run(mudiff_run, checkpoint="best", progress=False)
    run = tmp_path / "kept"
    trainer = Trainer(make_config(model={"method": "unet_l1"}, train={"epochs": 2, "keep_best": "val_psnr_mutual"}),
                      run)
    scores = iter([2.0, 1.0])  # the first epoch's validation is the best
    trainer.method.validate = lambda *args, **kwargs: {"val_psnr_mutual": next(scores)}
    trainer.fit()
    best = evaluate_runs({"u": run}, checkpoint="best", progress=False)["u"]
    last = evaluate_runs({"u": run}, progress=False)["u"]
    summaries = {name: json.loads((run / folder / "test_summary.json").read_text())
                 for name, folder in (("best", "eval_best"), ("last", "eval"))}
    assert summaries["best"]["checkpoint"] == "best" and summaries["last"]["checkpoint"] == "last"
    assert summaries["best"]["checkpoint_step"] < summaries["last"]["checkpoint_step"] == trainer.step
    assert len(best) == len(last) and not best["psnr_B"].equals(last["psnr_B"])


def test_paper_protocol_is_named(mudiff_run):
    summary = evaluate_run(mudiff_run, split="val", protocol="paper", max_slices=2, progress=False)
    assert summary["slices"] == 2 and "paper protocol" in summary["protocol_line"]
    assert "paper protocol" in (mudiff_run / "eval" / "val_slices.csv").read_text().splitlines()[0]
    full = evaluate_run(mudiff_run, split="val", progress=False)  # other settings: the quick one is kept aside
    kept = mudiff_run / "eval" / "previous" / "val_paper_seed0_n2_step2"
    assert json.loads((kept / "val_summary.json").read_text()) == summary
    assert "paper protocol" in (kept / "val_slices.csv").read_text().splitlines()[0]
    assert json.loads((mudiff_run / "eval" / "val_summary.json").read_text()) == full
    with pytest.raises(ValueError, match="protocol"):
        evaluate_run(mudiff_run, protocol="jpeg")
    with pytest.raises(ValueError, match="max_slices"):
        evaluate_run(mudiff_run, max_slices=0)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        evaluate_run(mudiff_run / "eval")


def test_compare_runs_tables_tests_and_plots(mudiff_run, copy_run, tmp_path):
    out = tmp_path / "figures"
    runs = {"MU-Diff": mudiff_run, "copy": copy_run}
    table = compare_runs(runs, split="test", out_dir=out, by="slice", progress=False)
    assert {"MU-Diff", "copy", "best", "second", "p_ttest", "p_wilcoxon"} <= set(table.columns)
    assert set(table["region"]) == {"B", "T"}
    assert table["p_ttest"].notna().all() and set(table["best"]) <= {"MU-Diff", "copy"}
    for name in ("compare_test_B.csv", "compare_test_B.md", "compare_test_B_box.png", "compare_test_T_box.png"):
        assert (out / name).is_file()
    assert "float protocol" in (out / "compare_test_B.md").read_text()
    assert "critic mask head fixed" in table.attrs["captions"]["B"]

    stamp = (copy_run / "eval" / "test_summary.json").stat().st_mtime_ns
    compare_runs(runs, split="test", out_dir=out, by="slice", progress=False)  # eval files reused
    assert (copy_run / "eval" / "test_summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("field, value, match", [("task", "t1_from_flair_t2_t1ce", "data.task"),
                                                 ("root", "elsewhere", "data.root")])
def test_compare_runs_refuses_mismatched_runs(copy_run, tmp_path, field, value, match):
    other = shutil.copytree(copy_run, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["data"][field] = value
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        compare_runs({"a": copy_run, "b": other}, out_dir=tmp_path / "fig")
    with pytest.raises(ValueError, match="at least two"):
        compare_runs({"a": copy_run}, out_dir=tmp_path / "fig")
