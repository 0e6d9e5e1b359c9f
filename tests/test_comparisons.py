"""Comparison helpers of notebooks 03 and 06-08: runs trained only when missing (and shared under other names),
results tables, the qualitative grid, the timestep table and the FID table write what they promise."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mudiff.data.prepare import load_manifest
from mudiff.display.viz import PHANTOM_NOTE
from mudiff.experiments import comparisons


def _stamps(folder: Path) -> tuple[int, str]:
    """What training changes: the checkpoint's mtime and the stats log (rewritten unchanged on a read-back)."""
    return (folder / "checkpoints" / "last.pt").stat().st_mtime_ns, (folder / "stats.jsonl").read_text()


@pytest.fixture(scope="module")
def variant_runs(tiny_run, tmp_path_factory):
    """MU-Diff (a copy of the tiny run, reused through ``reuse``), the single network and copy-source, trained by
    ``train_variants`` into a fresh runs root; returns (runs, runs_root, base run)."""
    root = tmp_path_factory.mktemp("variants")
    base = root / "first_run"
    shutil.copytree(tiny_run, base)
    runs = comparisons.train_variants(base, comparisons.select(comparisons.METHODS, ["mudiff", "single",
                                                                                     "copy_source"]),
                                      root / "runs", ["train.device=cpu"], reuse=[base])
    return runs, root / "runs", base


def test_train_variants_trains_only_what_is_missing(variant_runs, make_config):
    runs, root, base = variant_runs
    assert list(runs) == ["mudiff", "single", "copy_source"]
    assert runs["mudiff"] == base, "the earlier run with the same config is reused, not trained again"
    assert not (root / "mudiff").exists()
    assert runs["single"] == root / "single" and runs["copy_source"] == root / "copy_source"
    table = comparisons.describe_runs(runs).set_index("run")
    assert (table["steps"] == 2).all(), "every run trained to the base config's max_steps"
    assert "variant single" in table.loc["single", "method"] and table.loc["copy_source", "method"] == "copy_source"
    assert "critic mask head fixed" in table.loc["mudiff", "method"]

    before = {name: _stamps(path) for name, path in runs.items()}
    again = comparisons.train_variants(base, comparisons.select(comparisons.METHODS, list(runs)), root,
                                       ["train.device=cpu", "train.log_every=5"], reuse=[base])
    assert again == runs
    assert {name: _stamps(path) for name, path in runs.items()} == before, "a second call trained something"

    # the same experiment under another name (08's abl1 is 03's single network) is found in the runs root
    renamed = comparisons.train_variants(base, {"abl1_single": ["model.variant=single"]}, root, ["train.device=cpu"])
    assert renamed == {"abl1_single": root / "single"} and not (root / "abl1_single").exists()
    assert _stamps(root / "single") == before["single"]

    with pytest.raises(ValueError, match="holds another experiment.*variant"):
        comparisons.train_variants(base, {"single": ["model.variant=two_f1"]}, root, ["train.device=cpu"])
    with pytest.raises(ValueError, match="unknown run name"):
        comparisons.select(comparisons.COMPONENTS, ["abl9"])
    with pytest.raises(FileNotFoundError, match="01_training"):
        comparisons.build_config(root / "no_such_run")


def test_config_differences_ignore_bookkeeping(make_config, tiny_slices, monkeypatch):
    cfg = make_config()
    same = comparisons.build_config(cfg, ["train.device=cpu", "train.log_every=7", "train.val_slices=0",
                                          f"data.root={Path(tiny_slices).resolve()}"])
    assert comparisons.config_differences(cfg, same) == []
    other = comparisons.build_config(cfg, ["model.num_timesteps=2", "train.use_critic=false"])
    diffs = comparisons.config_differences(cfg, other)
    assert len(diffs) == 2 and any("num_timesteps" in d for d in diffs) and any("use_critic" in d for d in diffs)
    # the critic's mask head counts for MU-Diff with a critic only (a run without one never reads it)
    assert comparisons.config_differences(cfg, comparisons.build_config(cfg, ["model.mask_head=learned"]))
    no_critic = comparisons.build_config(cfg, ["train.use_critic=false"])
    assert comparisons.config_differences(no_critic, comparisons.build_config(no_critic, ["model.mask_head=learned"])
                                          ) == []
    # the unpaired training subjects count for the cycle methods only (tests/test_syndiff_cycle.py)
    assert comparisons.config_differences(cfg, comparisons.build_config(cfg, ["data.unpaired_subjects=shared"])) == []
    assert comparisons.timestep_runs([2, 8]) == {"T2": ["model.num_timesteps=2"], "T8": ["model.num_timesteps=8"]}
    with pytest.raises(ValueError):
        comparisons.timestep_runs([0])


def test_results_tables_write_tables_and_box_plots(variant_runs, tmp_path):
    runs = variant_runs[0]
    frames = comparisons.evaluate_runs(runs, max_slices=4, device="cpu", progress=False)
    assert {len(df) for df in frames.values()} == {4}
    assert len({tuple(df["subject"] + df["slice"].astype(str)) for df in frames.values()}) == 1, "same slices"

    tables = comparisons.results_tables(frames, "99_results", tmp_path, by="slice", note="PIPELINE CHECK",
                                        run_dirs=runs)
    regions = list(dict.fromkeys(tables["region"]))
    assert regions[0] == "B"
    for region in regions:
        for suffix in (".csv", ".md", ".png", "_scores.csv"):
            assert (tmp_path / f"99_results_{region}{suffix}").is_file(), f"{region}{suffix} missing"
        caption = tables.attrs["captions"][region]
        assert "PIPELINE CHECK" in caption and "critic mask head fixed" in caption
    table = pd.read_csv(tmp_path / "99_results_B.csv", comment="#")
    assert list(table["metric"]) == ["psnr_B", "ssim_B", "mae_B"]
    assert {"mudiff", "single", "copy_source", "best", "second", "n", "p_ttest", "p_wilcoxon"} <= set(table.columns)
    assert (table["n"] == 4).all()
    scores = pd.read_csv(tmp_path / "99_results_B_scores.csv")
    assert len(scores) == 3 * 4 and set(scores["run"]) == set(runs)
    assert "PIPELINE CHECK" in (tmp_path / "99_results_B.md").read_text()


def test_qualitative_grid_layout_and_scores(variant_runs, tmp_path):
    from mudiff.data.dataset import TaskDataset

    runs = variant_runs[0]
    fig = comparisons.qualitative_grid(runs, n_slices=2, device="cpu", out=tmp_path / "grid.png", note="NOTE")
    main_axes = [ax for ax in fig.axes if ax.get_title() or ax.get_xlabel()]
    assert len(main_axes) == 2 * (1 + len(runs)), "one row per slice: ground truth and every run"
    labels = [ax.get_xlabel() for ax in main_axes]
    assert sum(" / " in label for label in labels) == len(main_axes), "SSIM_B / SSIM_T under every image"
    assert all(len(ax.child_axes) == 1 for ax in main_axes), "a zoomed inset in every image"
    assert "NOTE" in fig.get_suptitle()
    table = pd.read_csv(tmp_path / "grid.csv")
    assert len(table) == 2 * len(runs) and {"run", "ssim_B", "ssim_T", "psnr_B"} <= set(table.columns)
    assert (tmp_path / "grid.png").is_file()

    config = comparisons.describe_runs(runs)
    dataset = TaskDataset(config["data"].iloc[0], config["task"].iloc[0], "test")
    chosen = comparisons.lesion_slices(dataset, 2)
    area = [dataset[i]["lesion_mask"].sum().item() for i in range(len(dataset))]
    assert min(area[i] for i in chosen) >= sorted(area)[-len(dataset.subjects) - 2], "the largest lesions"


def test_ranked_slices_put_the_worst_first_whatever_the_metric_direction():
    frame = pd.DataFrame({"index": [10, 11, 12], "psnr_B": [20.0, 30.0, 25.0], "mae_B": [0.3, 0.1, 0.2],
                          "psnr_T": [np.nan, 15.0, 12.0]})
    assert comparisons.ranked_slices(frame, "psnr_B")["index"].tolist() == [10, 12, 11]
    assert comparisons.ranked_slices(frame, "mae_B")["index"].tolist() == [10, 12, 11]
    assert comparisons.ranked_slices(frame, "mae_B", worst_first=False)["index"].tolist() == [11, 12, 10]
    assert comparisons.ranked_slices(frame, "psnr_T")["index"].tolist() == [12, 11], "slices without lesion left out"
    assert comparisons.score_columns(frame) == ["psnr_B", "mae_B", "psnr_T"]
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        comparisons.ranked_slices(frame, "dice")


def test_scores_explorer_static_and_widgets(variant_runs, tmp_path, monkeypatch):
    from mudiff.display import explore

    runs, _, _ = variant_runs
    scores = comparisons.evaluate_runs(runs, max_slices=6, device="cpu", progress=False)
    fig = comparisons.scores_explorer(runs, scores, interactive=False, out=tmp_path / "03_explorer.png")
    shown = pd.read_csv(tmp_path / "03_explorer.csv")
    ranked = comparisons.ranked_slices(scores["mudiff"], "psnr_B")
    assert shown[shown["run"] == "mudiff"]["index"].tolist() == [ranked["index"].iloc[0], ranked["index"].iloc[-1]]
    assert np.allclose(shown[shown["run"] == "mudiff"]["psnr_B"], ranked["psnr_B"].iloc[[0, -1]]), \
        "the grid's scores are the evaluation's (same seeds, same protocol)"
    assert len(fig.axes) >= 2 * (len(runs) + 1)

    drawn = []  # outside a kernel an Output widget captures nothing: record the figures it is given instead
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    box = comparisons.scores_explorer(runs, scores, interactive=True)
    (run, metric, rank), order, label = box.children[0].children, box.children[1], box.children[2]
    assert rank.max == len(ranked) and "rank 1 of" in label.value and "psnr_B" in label.value
    rank.value = rank.max
    assert f"= {ranked['psnr_B'].iloc[-1]:.4g}" in label.value
    order.value = "best first"
    assert rank.value == 1 and drawn[-1] is drawn[-2], "the same slice again: drawn once, shown from the cache"
    run.value = "single"
    assert "single psnr_B" in label.value and len(drawn) == 4, "one redraw per change"


def test_zoom_box_is_a_square_around_the_lesion_inside_the_image():
    lesion = np.zeros((32, 32), bool)
    lesion[1:4, 28:31] = True
    ys, xs = comparisons.zoom_box(lesion)
    assert ys.stop - ys.start == xs.stop - xs.start >= 8
    assert 0 <= ys.start and ys.stop <= 32 and 0 <= xs.start and xs.stop <= 32
    assert lesion[ys, xs].sum() == lesion.sum()
    ys, xs = comparisons.zoom_box(np.zeros((32, 32), bool))
    assert (ys.start + ys.stop) / 2 == 16 == (xs.start + xs.stop) / 2


def test_timestep_table_columns_and_figure(variant_runs, tmp_path):
    runs, root, base = variant_runs
    t_runs = comparisons.train_variants(base, comparisons.timestep_runs([2, 4]), root, ["train.device=cpu"],
                                        reuse=[base])
    assert t_runs["T4"] == base and t_runs["T2"] == root / "T2"
    table = comparisons.timestep_table(t_runs, max_slices=2, device="cpu", by="slice", timing_slices=2, repeats=1,
                                       progress=False)
    assert list(table["run"]) == ["T2", "T4"] and list(table["T"]) == [2, 4]
    assert list(table["network_evaluations"]) == [4, 8], "2T evaluations of the mutual pair"
    for col in ("psnr_B", "psnr_B_sd", "ssim_B", "ssim_T", "mae_T", "n_B", "n_T", "sampling_s_per_slice", "device"):
        assert col in table.columns
    assert (table["sampling_s_per_slice"] > 0).all() and (table["n_B"] == 2).all()
    assert "fastest of 1 passes" in table.attrs["caption"]
    comparisons.timestep_figure(table, tmp_path / "06.png", note="NOTE")
    assert (tmp_path / "06.png").is_file() and len(pd.read_csv(tmp_path / "06.csv")) == 2


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_fid_table_equal_n_and_labelled_domain_distance(variant_runs, tmp_path):
    runs = {k: v for k, v in variant_runs[0].items() if k in ("mudiff", "copy_source")}
    table = comparisons.fid_table(runs, max_slices=2, device="cpu", domain_epochs=1)
    assert list(table["set"]) == ["real (val split)", "mudiff", "copy_source"]
    assert list(table["kind"]) == ["real reference", "synthetic", "synthetic"]
    assert (table["n_real"] == 2).all() and (table["n_fake"] == 2).all(), "equal n for every compared set"
    assert np.isfinite(table[["fid", "kid_mean", "domain_feature_distance"]].to_numpy()).all()
    assert (table["fid"] >= 0).all()
    assert "domain" in table.attrs["caption"] and "not FID" in table.attrs["caption"]
    comparisons.fid_figure(table, tmp_path / "07.png", note="NOTE")
    assert (tmp_path / "07.png").is_file() and len(pd.read_csv(tmp_path / "07.csv")) == 3


def test_comparison_slices_and_notes(phantom_dir, tiny_slices, tmp_path):
    assert comparisons.comparison_slices(phantom_dir, tiny_slices) == Path(tiny_slices)
    small = comparisons.comparison_slices(phantom_dir, tiny_slices, tmp_path / "s16", size=16, slices=3)
    manifest = small / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert comparisons.comparison_slices(phantom_dir, tiny_slices, small, size=16, slices=3) == small
    assert manifest.stat().st_mtime_ns == stamp, "prepared once"
    with pytest.raises(ValueError, match=r"'size': \(16, 32\)"):
        comparisons.comparison_slices(phantom_dir, tiny_slices, small, size=32, slices=3)
    subjects = [{k: load_manifest(f)["split"][k] for k in ("train", "val", "test")} for f in (small, tiny_slices)]
    assert subjects[0] == subjects[1], "the copy keeps the subjects of each split"

    from mudiff.demo import ensure_slices  # a folder prepared with another split is an error, not silently reused

    with pytest.raises(ValueError, match=r"'split': \(\[0.7, 0.2, 0.1\], \[0.5, 0.25, 0.25\]\)"):
        ensure_slices(phantom_dir, small, size=16, slices=3, split=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match=r"'seed': \(0, 1\)"):
        ensure_slices(phantom_dir, small, size=16, slices=3, seed=1)
    assert ensure_slices(phantom_dir, small, size=16, slices=3, seed=0, split=[0.7, 0.2, 0.1]) == small

    assert comparisons.is_phantom(tiny_slices)
    note = comparisons.figure_note(True, tiny_slices)
    assert comparisons.QUICK_NOTE in note and PHANTOM_NOTE in note
    assert comparisons.figure_note(False) == ""
