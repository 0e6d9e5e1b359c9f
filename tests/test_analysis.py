"""Analyses of a trained MU-Diff: seeded draws, tau's gate maps, the critic's masks, x^p1/x^p2/mutual, H1-vs-H2 CKA."""
import numpy as np
import pandas as pd
import pytest
import torch

from mudiff.data.dataset import TaskDataset
from mudiff.diffusion import Schedule
from mudiff.evaluation import analysis
from mudiff.methods import build_method, no_wrap
from mudiff.models import MuDiff
from mudiff.sample import Sampler


@pytest.fixture(scope="module")
def sampler(tiny_run):
    return Sampler.from_checkpoint(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def test_set(sampler, tiny_slices):
    return TaskDataset(tiny_slices, sampler.cfg.data.task, "test")


def draws_of(sampler, dataset, **kwargs):
    return analysis.fixed_draws(dataset, sampler.method.schedule, sampler.cfg.model.z_dim, **kwargs)


def test_fixed_draws_are_seeded_and_cover_the_steps(sampler, test_set):
    a, b = draws_of(sampler, test_set, n=5, seed=3), draws_of(sampler, test_set, n=5, seed=3)
    c = draws_of(sampler, test_set, n=5, seed=4)
    assert len(a) == 5 and a.x_tp1.shape == (5, 1, 32, 32) and a.sources.shape == (5, 3, 32, 32)
    torch.testing.assert_close(a.x_tp1, b.x_tp1)
    torch.testing.assert_close(a.z, b.z)
    assert not torch.allclose(a.x_tp1, c.x_tp1)
    assert a.t.tolist() == [0, 1, 2, 3, 0], "t cycles through the steps"
    fixed = draws_of(sampler, test_set, n=3, t=2, indices=[0, 2, 4])
    assert fixed.t.tolist() == [2, 2, 2] and fixed.index == [test_set[i]["index"] for i in (0, 2, 4)]
    with pytest.raises(ValueError, match="t must lie"):
        draws_of(sampler, test_set, n=2, t=4)
    chosen = analysis.lesion_indices(test_set, 3)
    areas = [float(test_set[i]["lesion_mask"].sum()) for i in range(len(test_set))]
    assert len(chosen) == 3 and areas[chosen[0]] == max(areas)


def test_adapter_maps_one_entry_per_source_pair(sampler, test_set, tmp_path, make_config):
    draws = draws_of(sampler, test_set, n=4, t=1)
    result = analysis.adapter_maps(sampler.method.generator, draws, test_set.sources)
    n = len(test_set.sources)
    assert len(result.pairs) == n
    for i, pair in enumerate(result.pairs):
        assert (pair["source"], pair["partner"]) == (test_set.sources[i], test_set.sources[(i + 1) % n])
        for kind in analysis.MAP_KINDS:
            assert pair[kind].shape == (4, 32, 32) and np.isfinite(pair[kind]).all()
        for gate in ("gate_a", "gate_b"):
            assert pair[gate].min() >= 0 and pair[gate].max() <= 1
        assert pair["feature"].min() >= 0 and pair["fuse"].min() >= 0
    assert len(result.scores) == n * len(analysis.MAP_KINDS)
    assert result.prediction.shape == (4, 32, 32)
    fig = analysis.plot_adapter_maps(result, out=tmp_path / "maps.png")
    assert (tmp_path / "maps.png").is_file() and (tmp_path / "maps.csv").is_file() and len(fig.axes) >= n * 4

    single = MuDiff(make_config(model={"variant": "single"}).model)
    with pytest.raises(ValueError, match="no contrast-aware adapter"):
        analysis.adapter_maps(single, draws, test_set.sources)


def test_lesion_concentration():
    brain = np.ones((1, 8, 8))
    lesion = np.zeros((1, 8, 8))
    lesion[0, 2:4, 2:4] = 1
    assert analysis.lesion_concentration(lesion * 0.9 + 0.05, brain, lesion) > 1
    assert analysis.lesion_concentration(1 - lesion, brain, lesion) < -1
    assert np.isnan(analysis.lesion_concentration(lesion, brain, np.zeros_like(lesion)))


def test_critic_masks_in_unit_range_of_image_size(sampler, test_set, tmp_path, make_config):
    draws = draws_of(sampler, test_set, n=3, t=0)
    masks = analysis.critic_masks(sampler.method, draws, seed=1)
    for m in (masks.m1, masks.m2, masks.m_real):
        assert m.shape == (3, 32, 32) and m.min() >= 0 and m.max() <= 1
    for image in (masks.x_p1, masks.x_p2, masks.xt_p1, masks.xt_p2):
        assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    assert len(masks.logits) == 3 and {"logit_p1", "logit_p2", "logit_real"} <= set(masks.logits)
    # at t = 0 the posterior sample is its mean (no noise): masks do not depend on the noise seed
    again = analysis.critic_masks(sampler.method, draws, seed=2)
    np.testing.assert_allclose(again.m1, masks.m1, atol=1e-6)
    figure = analysis.plot_critic_masks(masks, n_show=2, out=tmp_path / "masks.png")
    assert (tmp_path / "masks.png").is_file()
    assert masks.head == "fixed" and "fixed mask head (never trained" in figure.get_suptitle()

    no_critic = build_method(make_config(train={"use_critic": False}))
    no_critic.setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)
    with pytest.raises(ValueError, match="without a critic"):
        analysis.critic_masks(no_critic, draws)


def test_critic_separation_counts_real_above_each_fake_per_t(sampler, test_set):
    """Per t and over all draws: the share of draws whose real x_t scores above x_t^{pj}, and the mean logits;
    checked against the logits of critic_masks, then on hand-made logits (ties are not "above")."""
    masks = analysis.critic_masks(sampler.method, draws_of(sampler, test_set, n=4, t=None), seed=0)
    table = analysis.critic_separation(masks).set_index("t")
    logits = masks.logits
    assert list(table.index) == [*sorted(logits["t"].unique()), "all"] and table.loc["all", "n"] == len(logits)
    assert table.loc["all", "real_above_p2"] == (logits["logit_real"] > logits["logit_p2"]).mean()
    assert table.loc["all", "logit_p1"] == pytest.approx(logits["logit_p1"].mean())
    masks.logits = pd.DataFrame({"t": [0, 0, 1, 1], "logit_real": [1.0, 0.0, 2.0, 2.0],
                                 "logit_p1": [0.0, 0.0, 3.0, 1.0]})
    hand = analysis.critic_separation(masks).set_index("t")
    assert hand["real_above_p1"].to_dict() == {0: 0.5, 1: 0.5, "all": 0.5} and "real_above_p2" not in hand


def test_p1_p2_mutual_scores(sampler, test_set, tmp_path):
    result, summary = analysis.p1_p2_mutual(sampler, test_set, n=3, batch_size=2)
    assert list(summary["prediction"]) == ["x_p1", "x_p2", "mutual"]
    assert (summary["slices"] == 3).all()
    assert summary.loc[summary["prediction"] == "mutual", "psnr_B_vs_mutual"].item() == 0
    analysis.plot_p1_p2_mutual(result, summary, n_show=2, out=tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file() and (tmp_path / "p.csv").is_file()


def test_cka_matrices_match_the_block_lists(sampler, test_set):
    generator = sampler.method.generator
    draws = draws_of(sampler, test_set, n=6)
    for part in ("encoder", "decoder"):
        res = analysis.h1_h2_cka(generator, draws, part, batch_size=4)
        unet = generator.f1.backbone
        names = unet.encoder_block_names() if part == "encoder" else unet.decoder_block_names()
        assert res.blocks1 == res.blocks2 == names
        assert res.matrix.shape == (len(names), len(names)) and np.isfinite(res.matrix).all()
        assert res.info["n_samples"] == 6 and len(res.diagonal) == len(names)
    assert all(not m._forward_hooks for m in generator.modules()), "CKA left hooks behind"
    summary = analysis.cka_summary([res])
    assert summary.loc[0, "blocks"] == len(res.blocks1)


def test_cka_of_a_network_with_itself_is_one(sampler, test_set, make_config):
    """H2 a copy of H1 (an abl2 pair whose second F1 holds the first one's weights): the diagonal is ~1."""
    cfg = make_config(model={"variant": "two_f1"})
    torch.manual_seed(0)
    pair = MuDiff(cfg.model)
    pair.f2.load_state_dict(pair.f1.state_dict())
    draws = analysis.fixed_draws(test_set, Schedule.from_config(cfg.model), cfg.model.z_dim, n=6, seed=0)
    for part in ("encoder", "decoder"):
        res = analysis.h1_h2_cka(pair, draws, part, batch_size=6)
        np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-4)
        assert analysis.cka_summary([res]).loc[0, "mean_same_block"] == pytest.approx(1.0, abs=1e-4)
    single = MuDiff(make_config(model={"variant": "single"}).model)
    with pytest.raises(ValueError, match="no H2"):
        analysis.h1_h2_cka(single, draws)
