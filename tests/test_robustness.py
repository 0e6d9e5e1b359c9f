"""Motion robustness: severity 0 changes nothing, one row per method x severity, the corrupted source only gets
worse with severity; the single-network run is trained from the MU-Diff run's config."""
import json

import numpy as np
import pytest
import torch

from mudiff.data.dataset import TaskDataset
from mudiff.evaluation import robustness
from mudiff.evaluation.metrics import slice_metrics
from mudiff.methods import build_method
from mudiff.sample import Sampler


@pytest.fixture(scope="module")
def samplers(tiny_run):
    mudiff = Sampler.from_checkpoint(tiny_run, device="cpu")
    cfg = type(mudiff.cfg).from_dict({**mudiff.cfg.to_dict(), "model": {**mudiff.cfg.to_dict()["model"],
                                                                        "variant": "single"}})
    torch.manual_seed(0)
    single = Sampler(build_method(cfg), cfg, device="cpu")  # untrained: the pipeline, not the numbers
    return {"mudiff": mudiff, "single": single}


@pytest.fixture(scope="module")
def test_set(samplers, tiny_slices):
    return TaskDataset(tiny_slices, samplers["mudiff"].cfg.data.task, "test")


@pytest.fixture(scope="module")
def result(samplers, test_set):
    return robustness.motion_robustness(samplers, test_set, "flair", severities=(1.0, 0.5), n=4, seed=0,
                                        batch_size=3, progress=False)


def test_one_row_per_method_and_severity(result):
    table = result.table
    assert len(table) == 2 * 3, "severity 0 is added as the reference"
    assert list(zip(table["method"], table["severity"])) == [(m, s) for m in ("mudiff", "single")
                                                             for s in (0.0, 0.5, 1.0)]
    assert (table["slices"] == 4).all()
    assert len(result.slices) == 2 * 3 * 4
    for col in robustness.SCORES:
        assert (table.loc[table["severity"] == 0, f"drop_{col}"] == 0).all()


def test_severity_zero_gives_no_drop_against_clean_inputs(samplers, test_set, result):
    """Severity 0 synthesises from the clean sources with the sampler's own seeds: the same scores as
    Sampler.synthesise_dataset on the untouched dataset."""
    indices = [0, 2, 3, 5]  # the evenly spaced 4 of the 6 test slices
    assert len(test_set) == 6
    items = [test_set[i] for i in indices]
    target = np.stack([(it["target"][0].numpy() + 1) / 2 for it in items])
    brain = np.stack([it["brain_mask"][0].numpy() for it in items])
    lesion = np.stack([it["lesion_mask"][0].numpy() for it in items])
    for name, sampler in samplers.items():
        clean = sampler.synthesise_dataset(test_set, indices, seed=0, batch_size=4, progress=False).mutual
        scores = slice_metrics(clean, target, brain, lesion)
        row = result.table[(result.table["method"] == name) & (result.table["severity"] == 0)].iloc[0]
        assert row["psnr_B"] == pytest.approx(scores["psnr_B"].mean(), abs=1e-3)
        assert row["ssim_B"] == pytest.approx(scores["ssim_B"].mean(), abs=1e-4)


def test_larger_severity_never_improves_the_corrupted_source(result):
    source = result.source.sort_values("severity")
    assert list(source["severity"]) == [0.0, 0.5, 1.0]
    assert source["psnr_B"].iloc[0] > 60, "severity 0 leaves the source as it was"
    assert (np.diff(source["psnr_B"]) <= 1e-6).all() and (np.diff(source["ssim_B"]) <= 1e-6).all()
    assert (np.diff(source["mae_B"]) >= -1e-9).all()


def test_figure_and_errors(result, samplers, test_set, tmp_path):
    fig = robustness.plot_robustness(result, out=tmp_path / "rob.png")
    assert (tmp_path / "rob.png").is_file() and (tmp_path / "rob.csv").is_file()
    assert len(fig.axes) == 3 * 4 + 4
    with pytest.raises(ValueError, match="not a source"):
        robustness.motion_robustness(samplers, test_set, "t1ce")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robustness.motion_robustness(samplers, test_set, "flair", severities=(2.0,))
    train_set = TaskDataset(test_set.root, test_set.task, "train")
    with pytest.raises(ValueError, match="subject\\(s\\) the run trained on"):  # scored on its own training data
        robustness.motion_robustness(samplers, train_set, "flair", n=2)


def test_single_network_run_from_the_mudiff_config(tiny_run, tmp_path):
    out = robustness.ensure_variant_run(tiny_run, tmp_path / "single", overrides=["train.max_steps=1"])
    cfg, base = (json.loads((p / "config.json").read_text()) for p in (out, tiny_run))
    assert cfg["model"]["variant"] == "single" and cfg["train"]["max_steps"] == 1
    assert {k: v for k, v in cfg["model"].items() if k != "variant"} == \
        {k: v for k, v in base["model"].items() if k != "variant"}
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    robustness.ensure_variant_run(tiny_run, out, overrides=["train.max_steps=1"])  # read back, not trained again
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert Sampler.from_checkpoint(out).method.generator.f2 is None
    with pytest.raises(FileNotFoundError, match="01_training"):
        robustness.ensure_variant_run(tmp_path / "nothing", tmp_path / "x")
