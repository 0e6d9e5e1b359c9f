"""The unpaired cycle methods (SynDiff cycle form, CycleGAN) in the shared Trainer: loss terms and weights,
gradient routing, resume, both sampling directions with per-slice seeds, rectangular images, bad sizes."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mudiff.config import RunConfig, load_config, replace
from mudiff.data.synthrad import MRCTDataset, prepare_synthrad
from mudiff.methods import build_method, no_wrap
from mudiff.train import Trainer, read_stats

from conftest import forwards_past_the_wrappers

SHAPE = (40, 48, 6)
REPO = Path(__file__).resolve().parents[1]


def make_subjects(root, n):
    """Fake heads: an ellipsoid with a bony shell (bright CT, dark MR), soft tissue inside, air outside."""
    idx = np.indices(SHAPE).astype(np.float32)
    for i in range(n):
        rng = np.random.default_rng(i)
        c = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
        r = np.sqrt(((idx[0] - c[0]) / 17) ** 2 + ((idx[1] - c[1]) / 21) ** 2 + ((idx[2] - c[2]) / 5) ** 2)
        body = r < 1
        shell = body & (r > 0.8)
        ct = np.where(body, 30.0, -1000.0) + 1000.0 * shell + rng.normal(0, 5, SHAPE)
        mr = np.where(body, 200.0, 3.0) - 170.0 * shell + rng.normal(0, 3, SHAPE)
        folder = root / f"1BA{i:03d}"
        folder.mkdir(parents=True)
        for name, data in (("mr", mr), ("ct", ct), ("mask", body.astype(np.uint8))):
            nib.save(nib.Nifti1Image(data.astype(np.float32 if name != "mask" else np.uint8), np.eye(4)),
                     folder / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared square (32x32) and rectangular (48x32) slices of 6 fake heads (4 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("cycle")
    make_subjects(root / "raw", 6)
    prepare_synthrad(root / "raw", root / "square", height=32, width=32, slices=4, split=(0.67, 0.17, 0.16))
    prepare_synthrad(root / "raw", root / "rect", height=48, width=32, slices=4, split=(0.67, 0.17, 0.16))
    return root


def config(root, method="syndiff_cycle", **train):
    return RunConfig.from_dict({
        "data": {"root": str(root), "task": "ct_from_mr"},
        "model": {"method": method, "image_size": 32, "num_sources": 1, "base_channels": 8,
                  "channel_mult": [1, 2], "num_res_blocks": 1, "z_dim": 8, "style_dim": 16, "critic_channels": 8,
                  "translator_channels": 8, "translator_blocks": 2, "patch_critic_channels": 8},
        "train": {"max_steps": 3, "batch_size": 2, "log_every": 1, "val_slices": 2, "checkpoint_every": 2,
                  "ema_decay": 0.9, "lr_g": 1e-3, "lr_d": 1e-3, **train}})


def batch(root, n=2):
    data = MRCTDataset(root, "train", unpaired=True)
    items = [data[i] for i in range(n)]
    return {d: torch.stack([it[d] for it in items]) for d in ("mr", "ct")}


@pytest.mark.parametrize("method", ["syndiff_cycle", "cyclegan"])
def test_trains_in_the_shared_loop_and_logs_every_term(data, tmp_path, method):
    trainer = Trainer(config(data / "square", method), tmp_path / method).fit()
    assert trainer.step == 3
    records = read_stats(tmp_path / method / "stats.jsonl")
    train_keys = set().union(*(r for r in records if "loss_g" in r))
    expected = {"loss_g", "adv_nd", "cycle", "loss_d_patch"}
    if method == "syndiff_cycle":
        expected |= {"adv_diff", "l1", "loss_d", "r1"}
    assert expected <= train_keys
    val = [r for r in records if "val_slices" in r][-1]
    assert {"val_psnr_mr_to_ct", "val_psnr_ct_to_mr", "val_mae_hu_mr_to_ct"} <= set(val)
    assert all(np.isfinite(v) for r in records for v in r.values() if isinstance(v, float))


def test_loss_is_the_weighted_sum_of_its_terms(data):
    x = batch(data / "square")
    totals = {}
    for lam in (0.5, 1.5):
        method = build_method(config(data / "square", lambda_cycle=lam, lambda_s=0.25, lambda_c=2.0))
        method.setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)
        if lam == 0.5:
            state = method.state_dict()
        method.load_state_dict(state)
        torch.manual_seed(0)
        terms = method.generator_losses(x)
        assert set(terms) == {"adv_diff", "adv_nd", "cycle", "l1", "loss_g"}
        expected = 2.0 * (terms["adv_diff"] + terms["adv_nd"]) + lam * terms["cycle"] + 0.25 * terms["l1"]
        torch.testing.assert_close(terms["loss_g"], expected)
        assert all(terms[k] > 0 for k in terms)
        totals[lam] = terms
    torch.testing.assert_close(totals[1.5]["loss_g"] - totals[0.5]["loss_g"], totals[0.5]["cycle"])


@pytest.mark.parametrize("only, diffusive_grad, translator_grad", [
    ("lambda_cycle", False, True),  # the cycle loss involves the translators only
    ("lambda_s", True, True),  # the diffusive L1 also trains the translators through y~ (not detached)
])
def test_gradient_routing(data, only, diffusive_grad, translator_grad):
    weights = {"lambda_c": 0.0, "lambda_s": 0.0, "lambda_cycle": 0.0, only: 1.0}
    method = build_method(config(data / "square", **weights))
    method.setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)
    method.generator_losses(batch(data / "square"))["loss_g"].backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(method.generator.diffusive) == diffusive_grad
    assert has_grad(method.generator.translators) == translator_grad
    assert not has_grad(method.critics) and not has_grad(method.patch_critics)


def test_every_training_forward_goes_through_the_wrapped_networks(data):
    """So that a compiled run compiles all of them (the generator step's critics included)."""
    method = build_method(config(data / "square"))
    x = batch(data / "square")
    through, total = forwards_past_the_wrappers(method, lambda: [method.train_step_unpaired(x, s) for s in (0, 1)])
    assert {name for name, _ in total} == {"ResnetTranslator", "UNet", "Critic", "PatchCritic"}
    assert through == total


def test_resume_continues_the_same_run(data, tmp_path):
    cfg = config(data / "square", max_steps=4, val_slices=0)
    straight = Trainer(cfg, tmp_path / "straight").fit()
    Trainer(replace(cfg, train={"max_steps": 2}), tmp_path / "resumed").fit()
    resumed = Trainer(cfg, tmp_path / "resumed")
    assert resumed.step == 2
    resumed.fit()
    for (name, a), b in zip(straight.method.state_dict().items(), resumed.method.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, atol=1e-5, rtol=1e-4)
    steps = [r["step"] for r in read_stats(tmp_path / "resumed" / "stats.jsonl") if "loss_g" in r]
    assert steps == [1, 2, 3, 4]


def test_sampling_both_directions_per_slice_seeds(data):
    method = build_method(config(data / "square"))
    method.setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap).eval()
    x = batch(data / "square", 3)
    calls = {"mr": [], "ct": []}
    for d, net in method.generator.diffusive.items():
        net.register_forward_hook(lambda m, inp, out, d=d: calls[d].append(inp[0][:, 1:].clone()))
    sct = method.translate(method.generator, x["mr"], "mr", [5, 6, 7])
    assert sct.shape == (3, 1, 32, 32) and sct.abs().max() <= 1
    assert len(calls["ct"]) == 4 and not calls["mr"]  # T = 4 steps of G_diff^ct only
    assert all(torch.equal(c, x["mr"]) for c in calls["ct"])  # conditioned on the real MR
    smr = method.translate(method.generator, x["ct"], "ct", [5, 6, 7])
    assert len(calls["mr"]) == 4 and smr.shape == (3, 1, 32, 32)
    alone = method.translate(method.generator, x["mr"][1:2], "mr", [6])
    torch.testing.assert_close(alone, sct[1:2], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(method.translate(method.generator, x["mr"][1:2], "mr", [8]), alone)
    with pytest.raises(ValueError, match="source must be one of"):
        method.translate(method.generator, x["mr"], "t1", [1, 2, 3])


def test_rectangular_images(data, tmp_path):
    cfg = replace(config(data / "rect", max_steps=1, val_slices=1), model={"image_size": 48, "image_width": 32})
    trainer = Trainer(cfg, tmp_path / "rect").fit()
    item = MRCTDataset(data / "rect", "test")[0]
    out = trainer.method.translate(trainer.method.generator, item["mr"][None], "mr", [0])
    assert out.shape == (1, 1, 48, 32)


def test_bad_sizes_are_clear_errors(data, tmp_path):
    with pytest.raises(ValueError, match="image_width=40: the critics need a multiple of 16"):
        replace(config(data / "rect"), model={"image_size": 48, "image_width": 40})
    with pytest.raises(ValueError, match="image_width=48 cannot be halved 5 times"):
        replace(config(data / "rect"), model={"image_size": 64, "image_width": 48, "channel_mult": [1, 1, 1, 1, 1, 1]})
    with pytest.raises(ValueError, match="48x32 but the model expects 32x32"):
        Trainer(config(data / "rect"), tmp_path / "mismatch")
    with pytest.raises(ValueError, match="supported by"):
        replace(config(data / "square"), model={"method": "mudiff", "image_width": 32})
    two_sources = replace(config(data / "square"), data={"task": "ct_from_mr_t2"}, model={"num_sources": 2})
    with pytest.raises(ValueError, match="one source"):
        build_method(two_sources)


# ---- evaluation and the untrained baselines (mudiff.experiments.unpaired) ---------------------------------------------------
def test_score_mae_in_hu_per_tissue(data):
    from mudiff.data.synthrad import HU_WINDOW
    from mudiff.experiments import unpaired

    slices = unpaired.TestSlices.load(data / "square", "test")
    perfect = unpaired.score(slices.ct, slices, "ct")
    assert (perfect["mae_hu"] == 0).all() and (perfect["psnr"] == 100).all()
    shifted = np.clip(slices.ct + 100 / (HU_WINDOW[1] - HU_WINDOW[0]), 0, 1)
    df = unpaired.score(shifted, slices, "ct")
    np.testing.assert_allclose(df["mae_hu_soft"], 100, atol=0.01)  # soft tissue and bone are far from the clip
    np.testing.assert_allclose(df["mae_hu_bone"].dropna(), 100, atol=0.01)
    assert df["mae_hu_bone"].notna().any()
    mr = unpaired.score(slices.mr, slices, "mr")
    assert "mae_hu" not in mr and (mr["mae"] == 0).all()


def test_bulk_density_and_histogram_match(data):
    from mudiff.experiments import unpaired

    train = MRCTDataset(data / "square", "train")
    slices = unpaired.TestSlices.load(data / "square", "test")
    bulk = unpaired.BulkDensity().fit(train)
    classes = bulk.classes(slices.mr, slices.mask)
    assert (classes[slices.mask == 0] == 0).all()
    true_bone = unpaired.unit_to_hu(slices.ct) >= 250
    assert (true_bone[classes == 2]).mean() > 0.6  # the dark shell of the MR is found as bone
    water = np.where(slices.mask > 0, unpaired.hu_to_unit(0.0), 0.0)
    assert (unpaired.score(bulk.predict(slices.mr, slices.mask), slices, "ct")["mae_hu"].mean()
            < unpaired.score(water, slices, "ct")["mae_hu"].mean())
    matched = unpaired.HistogramMatch().fit(train).predict(slices.ct, slices.mask)
    body = slices.mask > 0
    assert abs(np.median(matched[body]) - np.median(slices.mr[body])) < 0.1
    with pytest.raises(ValueError, match="not fitted"):
        unpaired.BulkDensity().predict(slices.mr, slices.mask)


def test_comparison_trains_every_run_and_scores_both_directions(data, tmp_path):
    from mudiff.experiments import unpaired

    cfg = config(data / "square", max_steps=1, val_slices=0)
    runs = unpaired.train_comparison(cfg, tmp_path / "runs")
    assert set(runs) == {"syndiff_cycle", "cyclegan", "paired_mr_to_ct", "paired_ct_to_mr"}
    slices = unpaired.TestSlices.load(data / "square", "test", max_slices=3)
    preds, scores = unpaired.compare(runs, slices, MRCTDataset(data / "square", "train"), batch_size=2)
    assert set(scores["mr_to_ct"]) == {"bulk_density", "syndiff_cycle", "cyclegan", "paired_mr_to_ct"}
    assert set(scores["ct_to_mr"]) == {"histogram_matched_ct", "syndiff_cycle", "cyclegan", "paired_ct_to_mr"}
    table = unpaired.results_table(scores["mr_to_ct"], "mr_to_ct", by="slice")
    assert list(table.index) == list(scores["mr_to_ct"]) and "mae_hu_bone" in table
    assert sum(str(v).endswith("*") for v in table["mae_hu"]) == 1
    with pytest.raises(ValueError, match="syndiff_cycle config"):
        unpaired.comparison_configs(replace(cfg, model={"method": "cyclegan"}))


def test_shared_subjects_run_differs_only_in_its_training_subjects(data):
    """comparison_configs(shared_subjects=True): one more SynDiff run whose two domains both see every training
    subject; the config's own run keeps the disjoint halves."""
    from mudiff.experiments import unpaired

    cfgs = unpaired.comparison_configs(config(data / "square"), shared_subjects=True)
    shared, disjoint = cfgs[unpaired.SHARED_SUBJECTS], cfgs["syndiff_cycle"]
    assert shared.differences(disjoint) == {"data.unpaired_subjects": ("shared", "disjoint")}
    cyclegan = cfgs["cyclegan"]
    assert replace(cyclegan, data={"unpaired_subjects": "shared"}).differences(cyclegan)  # read by both cycle methods
    paired = cfgs["paired_mr_to_ct"]  # MU-Diff on paired slices never reads it
    assert not replace(paired, data={"unpaired_subjects": "shared"}).differences(paired)
    halves, every = (build_method(c).dataset("train").subjects_by_domain for c in (disjoint, shared))
    assert every["mr"] == every["ct"] == sorted(halves["mr"] + halves["ct"])
    assert not set(halves["mr"]) & set(halves["ct"])
    with pytest.raises(ValueError, match="already shares"):
        unpaired.comparison_configs(shared, shared_subjects=True)


def test_claims_over_seeds_and_subjects_from_compares_scores():
    """long_scores + claims_table read compare()'s per-slice scores of several training seeds: MAE oriented (lower
    wins), a subject's slices averaged, a method that was not trained listed as not run."""
    from mudiff.evaluation.stats import claims_table
    from mudiff.experiments import unpaired

    rng = np.random.default_rng(0)
    subjects = np.repeat([f"S{i}" for i in range(6)], 3)

    def frame(mae):  # per slice: subject, z, and a subject-level offset shared by every method
        offset = np.repeat(np.arange(6) * 10.0, 3)
        return pd.DataFrame({"subject": subjects, "z": np.tile([0, 1, 2], 6), "mae_hu": mae + offset,
                             "mae_hu_bone": mae + offset, "psnr": 30 - mae / 10, "mae": mae / 1000,
                             "ssim": 0.9 - mae / 1000})

    long = pd.concat([unpaired.long_scores({
        "mr_to_ct": {"bulk_density": frame(np.full(18, 180.0)),
                     "syndiff_cycle": frame(150.0 + rng.normal(0, 5, 18)),
                     "paired_mr_to_ct": frame(80.0 + rng.normal(0, 5, 18))},
        "ct_to_mr": {"histogram_matched_ct": frame(np.full(18, 150.0)),
                     "syndiff_cycle": frame(190.0 + rng.normal(0, 5, 18))}}, seed) for seed in (0, 1, 2)])
    assert {"run", "output", "seed", "subject"} <= set(long) and len(long) == 5 * 18 * 3
    table = claims_table(long, unpaired.CLAIMS).set_index(["claim", "metric"])
    beats_bulk = table.loc[(unpaired.CLAIMS[0].text, "mae_hu")]
    assert beats_bulk["verdict"] == "reproduced" and beats_bulk["n_subjects"] == 6 and beats_bulk["n_seeds"] == 3
    assert beats_bulk["effect"] == pytest.approx(30, abs=3)  # 180 - 150 HU, oriented: > 0 favours SynDiff
    assert table.loc[(unpaired.CLAIMS[1].text, "mae"), "verdict"] == "not reproduced"
    assert (table.loc[unpaired.CLAIMS[2].text, "verdict"] == "not run").all()  # no CycleGAN scores
    paired_over_cycle = table.loc[("the paired upper bound beats SynDiff (cycle) on MR -> CT", "mae_hu")]
    assert paired_over_cycle["verdict"] == "reproduced" and paired_over_cycle["effect"] == pytest.approx(70, abs=5)
    assert (table.loc["the paired upper bound beats SynDiff (cycle) on CT -> MR", "verdict"] == "not run").all()


def test_every_claim_names_a_run_and_direction_that_compare_scores():
    """The claims' runs are comparison_configs' names (or the untrained baselines) and each paired run is claimed
    in its own direction only: a renamed run would otherwise leave its claims silently "not run"."""
    from mudiff.experiments import unpaired

    cfg = load_config(REPO / "configs" / "unpaired_quick.yaml")
    runs = set(unpaired.comparison_configs(cfg, shared_subjects=True)) | {"bulk_density", "histogram_matched_ct"}
    for claim in unpaired.CLAIMS:
        for run, output in (claim.a, claim.b):
            assert run in runs and output in unpaired.DIRECTIONS, (claim.text, run, output)
            assert not run.startswith("paired_") or run == f"paired_{output}", (claim.text, run, output)
    assert {c.a[0] for c in unpaired.CLAIMS} >= {n for n in runs if n.startswith("paired_")}


def test_translator_diagnostic_conditions_g_diff_on_the_translated_target(data, tmp_path):
    """OWN_TRANSLATION reads the real target only (through G_nd), TRANSLATOR_ALONE the real source only."""
    import dataclasses

    from mudiff.experiments import unpaired

    Trainer(config(data / "square", max_steps=1, val_slices=0), tmp_path / "run").fit()
    slices = unpaired.TestSlices.load(data / "square", "test", max_slices=3)
    scores = unpaired.translator_diagnostic(tmp_path / "run", slices, batch_size=2)
    names = {unpaired.TRANSLATOR_ALONE, unpaired.OWN_TRANSLATION}
    assert set(scores) == set(unpaired.DIRECTIONS) and all(set(s) == names for s in scores.values())
    assert all(len(frame) == 3 and frame["psnr"].notna().all() for s in scores.values() for frame in s.values())
    blank_mr = unpaired.translator_diagnostic(tmp_path / "run", dataclasses.replace(slices, mr=slices.mr * 0 + 0.5),
                                              batch_size=2)["mr_to_ct"]
    pd.testing.assert_frame_equal(blank_mr[unpaired.OWN_TRANSLATION], scores["mr_to_ct"][unpaired.OWN_TRANSLATION])
    alone = unpaired.TRANSLATOR_ALONE
    assert not np.allclose(blank_mr[alone]["mae"], scores["mr_to_ct"][alone]["mae"])
    Trainer(config(data / "square", method="cyclegan", max_steps=1, val_slices=0), tmp_path / "gan").fit()
    with pytest.raises(ValueError, match="not a syndiff_cycle run"):
        unpaired.translator_diagnostic(tmp_path / "gan", slices)


def test_translate_volume_writes_hu_with_the_source_affine(data, tmp_path):
    from mudiff.experiments import unpaired

    Trainer(config(data / "square", max_steps=1, val_slices=0), tmp_path / "run").fit()
    subject = data / "raw" / "1BA000"
    path = unpaired.translate_volume(tmp_path / "run", subject, "mr", tmp_path / "sct.nii.gz", batch_size=3)
    sct, mr = nib.load(path), nib.load(subject / "mr.nii.gz")
    assert sct.shape == mr.shape
    np.testing.assert_allclose(sct.affine, mr.affine)
    values = sct.get_fdata()
    assert -1024 <= values.min() and values.max() <= 3000 and values.std() > 1  # HU, not [0, 1]
    smr = nib.load(unpaired.translate_volume(tmp_path / "run", subject, "ct", tmp_path / "smr.nii.gz")).get_fdata()
    assert 0 <= smr.min() and smr.max() <= 1
    mr_only = tmp_path / "1BA000_without_ct"  # a new patient: the MR and the body mask, no CT
    mr_only.mkdir()
    for name in ("mr", "mask"):
        shutil.copy(subject / f"{name}.nii.gz", mr_only)
    again = unpaired.translate_volume(tmp_path / "run", mr_only, "mr", tmp_path / "sct2.nii.gz", batch_size=3)
    np.testing.assert_array_equal(nib.load(again).get_fdata(), values)  # the CT was never needed
    with pytest.raises(FileNotFoundError, match=r"missing \['ct'\]"):
        unpaired.translate_volume(tmp_path / "run", mr_only, "ct", tmp_path / "x.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing"):
        unpaired.translate_volume(tmp_path / "run", tmp_path / "empty", "mr", tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="inside the subject's folder"):
        unpaired.translate_volume(tmp_path / "run", mr_only, "mr", mr_only / "ct.nii.gz")


def test_translation_explorer_widgets_and_static_figures(data, tmp_path, monkeypatch):
    from mudiff.display import explore
    from mudiff.experiments import unpaired

    slices = unpaired.TestSlices.load(data / "square", "all", max_slices=8)
    preds = {"bulk_density": {"mr_to_ct": slices.ct * 0.9},
             "cycle": {"mr_to_ct": slices.ct * 0.8, "ct_to_mr": slices.mr * 0.8}}
    drawn = []
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    box = unpaired.translation_explorer(slices, preds, interactive=True)
    (subject, slider), (direction, methods), _ = box.children[0].children, box.children[1].children, box.children[2]
    assert len(subject.options) > 1 and len(drawn) == 1
    subject.value = subject.options[-1]  # redraws once for the subject, maybe once more for the slice
    n = len(drawn)
    slider.value = 0 if slider.value else 1
    direction.value = "ct_to_mr"
    assert len(drawn) == n + 2 and len(drawn[-1].axes) == 4  # source, truth, cycle, its error
    methods.value = ("bulk_density",)  # no CT -> MR for bulk density: a message, no figure
    assert len(drawn) == n + 2
    figs = unpaired.translation_explorer(slices, preds, interactive=False, out=tmp_path / "explorer.png")
    assert len(figs) == 2 and (tmp_path / "explorer_mr_to_ct.png").is_file()


def test_schedule_matches_the_syndiff_test_vector():
    """SYNDIFF_CYCLE.md §2: the T = 4 VP schedule the cycle methods share with MU-Diff."""
    from mudiff.diffusion import Schedule

    s = Schedule(4, 0.1, 20.0)
    torch.testing.assert_close(s.betas, torch.tensor([1e-8, 0.47826, 0.84921, 0.95642, 0.9874]), atol=5e-5, rtol=0)
    torch.testing.assert_close(s.a_cum, torch.tensor([1, 0.72232, 0.28049, 0.058557, 0.0065719]), atol=5e-5, rtol=0)
    torch.testing.assert_close(s.sigma_cum, torch.tensor([1e-4, 0.69156, 0.95986, 0.99828, 0.99998]), atol=5e-5,
                               rtol=0)
    torch.testing.assert_close(s.posterior_mean_coef1, torch.tensor([1, 0.66578, 0.26919, 0.057822]), atol=5e-5, rtol=0)
    torch.testing.assert_close(s.posterior_mean_coef2, torch.tensor([0, 0.20158, 0.19300, 0.11185]), atol=5e-5, rtol=0)
    torch.testing.assert_close(s.posterior_variance, torch.tensor([0, 0.44082, 0.88420, 0.98406]), atol=5e-5, rtol=0)


@pytest.mark.parametrize("name", ["unpaired_quick", "unpaired_full"])
def test_unpaired_configs_use_syndiffs_lazy_r1(name):
    """SYNDIFF_CYCLE.md §0: R1 with gamma 1 on the real x_t every 10th step, not multiplied by the interval (the
    shared default scales it by lazy_reg, as MU-Diff's spec asks: SynDiff's penalty would be 10 times stronger)."""
    tc = load_config(REPO / "configs" / f"{name}.yaml").train
    assert (tc.r1_gamma, tc.lazy_reg, tc.r1_scale_by_interval) == (1.0, 10, False)
