"""The networks on tiny configs: shapes, ranges, variants, conditioning, gradients, hooks, building blocks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mudiff.config import ModelConfig
from mudiff.models import F1, F2, Critic, MuDiff, count_parameters, record_features
from mudiff.models.adapters import ContrastAdapter
from mudiff.models.critic import minibatch_stddev
from mudiff.models.layers import AdaGN, FIRDownsample, FIRUpsample


def tiny(**changes) -> ModelConfig:
    fields = dict(image_size=32, num_sources=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_dim=8,
                  style_dim=16, critic_channels=8)
    fields.update(changes)
    return ModelConfig(**fields)


def inputs(cfg: ModelConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    return (torch.randn(batch, 1, size, size, generator=g),
            torch.rand(batch, cfg.num_sources, size, size, generator=g) * 2 - 1,
            torch.randint(0, cfg.num_timesteps, (batch,), generator=g), torch.randn(batch, cfg.z_dim, generator=g))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("variant", ["mudiff", "single", "two_f1", "no_tau"])
@pytest.mark.parametrize("n, batch", [(1, 1), (2, 3), (3, 5), (4, 3)])
def test_generators_shapes_and_range(variant, n, batch):
    cfg = tiny(variant=variant, num_sources=n)
    model = MuDiff(cfg)
    x_p1, x_p2 = model(*inputs(cfg, batch))
    assert x_p1.shape == (batch, 1, 32, 32) and x_p1.abs().max() <= 1
    expected_f2 = {"mudiff": F2, "no_tau": F2, "two_f1": F1, "single": type(None)}[variant]
    assert type(model.f2) is expected_f2
    if variant == "single":
        assert x_p2 is None
    else:
        assert x_p2.shape == x_p1.shape and x_p2.abs().max() <= 1
        assert not torch.allclose(x_p1, x_p2)  # separate weights
    if variant == "no_tau":
        assert isinstance(model.f2.tau, nn.Identity)


def test_reference_parameter_counts():
    cfg = ModelConfig()  # nf 64, (1, 2, 4), 2 res blocks, 3 sources, 256 x 256: constructed, never run
    model, critic = MuDiff(cfg), Critic(cfg)
    f1, f2, psi = count_parameters(model.f1), count_parameters(model.f2), count_parameters(critic)
    print(f"\nreference parameters: F1 {f1 / 1e6:.2f} M, F2 {f2 / 1e6:.2f} M (+{(f2 - f1) / 1e6:.2f} M), "
          f"critic {psi / 1e6:.2f} M")
    assert 10e6 < f1 < f2 < 35e6
    assert 0.5e6 < f2 - f1 < 1.5e6  # rho + phi2's modulation + tau: "about 1 M more"


def test_f2_gradient_reaches_f1_through_x_p1():
    cfg = tiny()
    model = MuDiff(cfg)
    _, x_p2 = model(*inputs(cfg, 2))
    x_p2.square().mean().backward()  # a loss on x^{p2} alone
    grads = [p.grad for p in model.f1.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_f1_output_depends_on_z_and_t():
    cfg = tiny()
    f1 = F1(cfg)
    x, s, t, z = inputs(cfg, 2)
    base = f1(x, s, t, z)
    assert (f1(x, s, t, torch.randn_like(z)) - base).abs().max() > 1e-4  # multimodal: z matters
    assert (f1(x, s, (t + 1) % cfg.num_timesteps, z) - base).abs().max() > 1e-4


@pytest.mark.parametrize("size, mult", [(48, (1, 2, 2)), (64, (1, 2, 4))])
def test_other_image_sizes(size, mult):
    cfg = tiny(image_size=size, channel_mult=mult)
    x, s, t, z = inputs(cfg, 2)
    x_p1, x_p2 = MuDiff(cfg)(x, s, t, z)
    assert x_p1.shape == x_p2.shape == (2, 1, size, size)
    logits, mask_logits = Critic(cfg)(x, x, t)
    assert logits.shape == (2,) and mask_logits.shape == (2, 1, size // 8, size // 8)


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
@pytest.mark.parametrize("sees_sources", [False, True])
def test_critic_shapes_and_mask(batch, sees_sources):
    cfg = tiny(num_sources=2, critic_sees_sources=sees_sources)
    critic = Critic(cfg)
    x, s, t, _ = inputs(cfg, batch)
    logits, mask_logits = critic(x, x, t, s if sees_sources else None)
    assert logits.shape == (batch,) and torch.isfinite(logits).all()
    assert mask_logits.shape == (batch, 1, 4, 4)
    mask = critic.mask(mask_logits, x.shape[-2:])
    assert mask.shape == (batch, 1, 32, 32) and 0 <= mask.min() and mask.max() <= 1
    with pytest.raises(ValueError, match="sources"):
        critic(x, x, t, None if sees_sources else s)


def test_critic_mask_head_fixed_or_learned():
    assert not any(p.requires_grad for p in Critic(tiny(mask_head="fixed")).mask_head.parameters())
    critic = Critic(tiny(mask_head="learned"))
    assert all(p.requires_grad for p in critic.mask_head.parameters())
    x, _, t, _ = inputs(tiny(), 2)
    _, mask_logits = critic(x, x, t)
    mask_logits.mean().backward()
    assert critic.mask_head.weight.grad.abs().sum() > 0


def test_minibatch_stddev_groups():
    h = torch.randn(6, 4, 2, 2)
    out = minibatch_stddev(h)  # B = 6: groups of 3, members k, k + 2, k + 4
    assert out.shape == (6, 5, 2, 2)
    expected = h[0::2].std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(out[0, 4], expected.expand(2, 2), rtol=1e-4, atol=1e-4)
    single = minibatch_stddev(torch.randn(1, 4, 2, 2))
    assert torch.isfinite(single).all() and single[0, 4].abs().max() < 1e-3


def test_hooks_capture_named_outputs_and_are_removed():
    cfg = tiny()
    model, critic = MuDiff(cfg), Critic(cfg)
    backbone = model.f1.backbone
    names = ([f"f1.backbone.{n}" for n in backbone.encoder_block_names() + backbone.decoder_block_names()]
             + [f"f2.backbone.{n}" for n in model.f2.backbone.encoder_block_names()]
             + [f"f2.tau.{n}" for n in model.f2.tau.feature_names()])
    assert "f2.tau.pairs.2.gate_a" in names and "f1.backbone.decoder.0" in names
    x, s, t, z = inputs(cfg, 2)
    with record_features(model, names) as feats, record_features(critic, ["mask_head"]) as critic_feats:
        model(x, s, t, z)
        _, mask_logits = critic(x, x, t)
    assert set(feats) == set(names)
    assert feats["f2.tau.pairs.0.gate_a"].shape == (2, cfg.base_channels, 32, 32)
    assert 0 < feats["f2.tau.pairs.1.gate_b"].min() and feats["f2.tau.pairs.1.gate_b"].max() < 1
    assert feats["f1.backbone.encoder.0"].shape == (2, cfg.base_channels, 32, 32)
    assert not feats["f1.backbone.decoder.0"].requires_grad
    torch.testing.assert_close(critic_feats["mask_head"], mask_logits.detach())
    assert all(not m._forward_hooks for m in list(model.modules()) + list(critic.modules()))
    with pytest.raises(KeyError, match="no_such"):
        with record_features(model, ["f1.no_such"]):
            pass


def test_contrast_adapter_pairs_and_single_source_identity():
    feats = torch.randn(2, 8, 4, 4)
    tau1 = ContrastAdapter(1, 8)
    assert not tau1.feature_names() and tau1(feats) is feats
    tau3 = ContrastAdapter(3, 8)
    assert len(tau3.pairs) == 3 and tau3(torch.randn(2, 24, 4, 4)).shape == (2, 24, 4, 4)


def test_fir_resampling_keeps_constants_and_halves_or_doubles():
    const = torch.full((2, 3, 16, 16), 0.7)
    down, up = FIRDownsample()(const), FIRUpsample()(const)
    assert down.shape == (2, 3, 8, 8) and up.shape == (2, 3, 32, 32)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))
    torch.testing.assert_close(up, torch.full_like(up, 0.7))
    # Away from the border, the same as the reference upfirdn2d-style zero-padded filters.
    x = torch.randn(1, 2, 8, 8)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = (torch.outer(k, k) / 64).expand(2, 1, 4, 4)
    torch.testing.assert_close(FIRDownsample()(x)[..., 1:-1, 1:-1],
                               F.conv2d(x, k, stride=2, padding=1, groups=2)[..., 1:-1, 1:-1])
    torch.testing.assert_close(FIRUpsample()(x)[..., 2:-2, 2:-2],
                               F.conv_transpose2d(x, 4 * k, stride=2, padding=1, groups=2)[..., 2:-2, 2:-2])


def test_adagn_starts_as_identity_modulation():
    norm = AdaGN(8, style_dim=5)
    x = torch.randn(3, 8, 4, 4)
    torch.testing.assert_close(norm(x, torch.zeros(3, 5)), F.group_norm(x, norm.groups))
    assert not torch.allclose(norm(x, torch.randn(3, 5)), F.group_norm(x, norm.groups))


def test_bf16_autocast_and_channels_last():
    cfg = tiny()
    model, critic = MuDiff(cfg).to(memory_format=torch.channels_last), Critic(cfg).to(memory_format=torch.channels_last)
    x, s, t, z = inputs(cfg, 3)
    x, s = x.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_p1, x_p2 = model(x, s, t, z)
        logits, mask_logits = critic(x_p1, x, t)
    assert x_p1.shape == x_p2.shape == (3, 1, 32, 32)
    assert torch.isfinite(x_p2.float()).all() and torch.isfinite(logits.float()).all()
    (logits.float().sum() + x_p2.float().mean()).backward()
    assert all(p.grad is not None for p in model.f1.parameters())
