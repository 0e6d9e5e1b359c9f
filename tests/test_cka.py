"""CKA: the direct linear CKA's invariances, and the torch-cka path (hooks removed, batch check, generators)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from mudiff.evaluation.cka import (ESTIMATOR, FixedNoiseWrapper, backbone_block_names, cka_heatmap, cka_matrix,
                                   index_batches, linear_cka)


def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 6)), rng.standard_normal((200, 6))
    y_dep = np.tanh(x @ rng.standard_normal((6, 9)))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x @ q, y_dep) == pytest.approx(linear_cka(x, y_dep))
    assert linear_cka(3.7 * x, y_dep) == pytest.approx(linear_cka(x, y_dep))
    assert linear_cka(x, y_dep) > 0.5
    assert linear_cka(x, y) < 0.05  # independent, n >> p


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8))


def test_torch_cka_agrees_with_linear_cka_and_cleans_up():
    a, b = mlp(0), mlp(1)
    a.train()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    layers = ["4", "0", "2"]  # deliberately not in execution order
    same, info = cka_matrix(a, copy.deepcopy(a), layers, layers, x.split(16))
    assert info["estimator"] == ESTIMATOR and info["n_samples"] == 64
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-5)
    cross, _ = cka_matrix(a, b, layers, layers[:2], [(batch, None) for batch in x.split(16)])
    assert cross.shape == (3, 2)
    with torch.no_grad():
        reference = np.array([[linear_cka(a[:int(i) + 1](x), b[:int(j) + 1](x)) for j in layers[:2]] for i in layers])
    assert np.abs(cross - reference).max() < 0.15  # unbiased minibatch vs biased full-batch estimate
    assert np.corrcoef(cross.ravel(), reference.ravel())[0, 1] > 0.8
    assert a.training and all(not m._forward_hooks for m in [*a.modules(), *b.modules()])
    with pytest.raises(ValueError, match="at least 4"):
        cka_matrix(a, b, layers, layers, x.split(3))
    with pytest.raises(ValueError, match="unknown"):
        cka_matrix(a, b, ["7"], layers, x.split(16))
    assert all(not m._forward_hooks for m in a.modules())


def test_generator_wrapper_and_heatmap(tmp_path):
    from mudiff.config import ModelConfig
    from mudiff.models import MuDiff

    cfg = ModelConfig(image_size=16, num_sources=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      z_dim=8, style_dim=16, critic_channels=8)
    torch.manual_seed(0)
    pair = MuDiff(cfg)
    g = torch.Generator().manual_seed(1)
    n = 10
    sources, x_tp1 = torch.rand(n, 2, 16, 16, generator=g), torch.randn(n, 1, 16, 16, generator=g)
    t, z = torch.randint(0, cfg.num_timesteps, (n,), generator=g), torch.randn(n, cfg.z_dim, generator=g)
    with torch.no_grad():
        x_p1 = pair.f1(x_tp1, sources, t, z)
    h1 = FixedNoiseWrapper(pair.f1, x_tp1, sources, t, z)
    h2 = FixedNoiseWrapper(pair.f2, x_tp1, sources, t, z, x_p1=x_p1)
    torch.testing.assert_close(h1(torch.arange(n)), x_p1)
    batches = index_batches(n, 4)
    assert [len(b) for b in batches] == [4, 6]  # the short tail is merged
    names = backbone_block_names(pair.f1)
    assert names[0] == "generator.backbone.encoder.0" and "generator.backbone.mid_attn" in names
    self_sim, _ = cka_matrix(h1, copy.deepcopy(h1), names, names, batches)
    np.testing.assert_allclose(np.diag(self_sim), 1.0, atol=1e-4)
    enc, dec = backbone_block_names(pair.f1, "encoder"), backbone_block_names(pair.f2, "decoder")
    matrix, info = cka_matrix(h1, h2, enc, dec, batches, names=("H1", "H2"))
    assert matrix.shape == (len(enc), len(dec)) and np.isfinite(matrix).all()
    fig = cka_heatmap(matrix, enc, dec, "H1 encoder vs H2 decoder", out=tmp_path / "cka.png")
    assert ESTIMATOR in fig.axes[0].get_title() and (tmp_path / "cka.png").exists()
    assert len((tmp_path / "cka.csv").read_text().splitlines()) == 1 + len(enc) * len(dec)
