"""The baselines (unet_l1, pix2pix, ddpm, copy_source): trained by the same loop, checkpointed, sampled."""
import pytest
import torch
from torch.utils.data import default_collate

from mudiff.data.dataset import TaskDataset
from mudiff.methods import build_method, no_wrap
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.methods.pix2pix import PatchGAN
from mudiff.sample import Sampler
from mudiff.train import Trainer, read_stats


DDPM = {"ddpm_timesteps": 50, "ddpm_sampling_steps": 4}
KEYS = {"unet_l1": {"l1"}, "pix2pix": {"loss_d", "adv", "l1"}, "ddpm": {"mse"},
        "copy_source": {"psnr_best_source", "psnr_flair", "psnr_t2", "psnr_t1"}}


def _method(make_config, name, train=None):
    torch.manual_seed(0)
    cfg = make_config(model={"method": name, **DDPM}, train=train)
    return build_method(cfg).setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)


def _batch(tiny_slices, n=3):
    data = TaskDataset(tiny_slices, "t1ce_from_flair_t2_t1", "train")
    batch = default_collate([data[i] for i in range(n)])
    return batch["target"], batch["sources"]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_trains_checkpoints_and_samples(make_config, tmp_path, name):
    cfg = make_config(model={"method": name, **DDPM}, train={"max_steps": 2, "val_slices": 2})
    trainer = Trainer(cfg, tmp_path / "run").fit()
    records = read_stats(tmp_path / "run" / "stats.jsonl")
    steps = [r for r in records if "loss_g" in r]
    assert steps[-1]["step"] == 2 and KEYS[name] <= set(steps[-1])
    assert any("val_psnr_mutual" in r for r in records)
    assert (trainer.ema is None) == (name == "copy_source")  # nothing to average without parameters

    sampler = Sampler.from_checkpoint(tmp_path / "run")
    weights = trainer.ema or trainer.method.generator
    for a, b in zip(weights.state_dict().values(), sampler.method.generator.state_dict().values()):
        assert torch.equal(a, b)
    _, sources = _batch(cfg.data.root)
    x_p1, x_p2, mutual = sampler(sources, [0, 1, 2])
    assert x_p2 is None and mutual.shape == (3, 1, 32, 32) and torch.equal(x_p1, mutual)
    assert torch.isfinite(mutual).all() and mutual.abs().max() <= 1


@pytest.mark.parametrize("name, key", [("unet_l1", "l1"), ("pix2pix", "l1")])
def test_l1_falls_on_a_fixed_batch(make_config, tiny_slices, name, key):
    method = _method(make_config, name, {"lr_g": 1e-3, "lr_d": 1e-3})
    x0, sources = _batch(tiny_slices)
    first = method.train_step(x0, sources, 0)[key]
    for step in range(1, 10):
        last = method.train_step(x0, sources, step)[key]
    assert last < 0.7 * first, (first, last)


def test_ddpm_loss_falls_on_a_fixed_batch(make_config, tiny_slices):
    method = _method(make_config, "ddpm", {"lr_g": 1e-3})
    x0, sources = _batch(tiny_slices)
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 50, (3,), generator=g), torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        before = method.loss(x0, sources, t, noise)
    for step in range(20):
        method.train_step(x0, sources, step)
    with torch.no_grad():
        after = method.loss(x0, sources, t, noise)
    assert after < 0.7 * before, (before, after)


def test_ddpm_sample_depends_on_the_slice_seed_only(make_config, tiny_slices):
    method = _method(make_config, "ddpm").eval()
    _, sources = _batch(tiny_slices)
    whole = method.sample(method.generator, sources, [7, 8, 9])[2]
    alone = torch.cat([method.sample(method.generator, sources[k:k + 1], [s])[2] for k, s in ((2, 9), (0, 7))])
    # batched kernels round differently (~1e-7); the first DDIM steps divide by sqrt(alpha_bar) ~ 1e-2
    torch.testing.assert_close(whole[[2, 0]], alone, atol=2e-4, rtol=0)
    other = method.sample(method.generator, sources[:1], [70])[2]
    assert (other - whole[:1]).abs().max() > 1e-2
    assert method.network_evaluations == DDPM["ddpm_sampling_steps"]
    with pytest.raises(ValueError, match="one seed per image"):
        method.sample(method.generator, sources, [1])


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_schedule(steps):
    schedule = DDPMSchedule(steps)
    abar = schedule.alphas_cumprod
    assert (abar.diff() < 0).all() and abar[-1] < 1e-3 and abar[0] > 0.99  # ends in noise whatever T
    if steps == 1000:  # Ho et al.'s linear betas
        torch.testing.assert_close(1 - abar[0], torch.tensor(1e-4))
    assert schedule.sampling_timesteps(1) == [steps - 1]
    full = schedule.sampling_timesteps(steps)
    assert full == list(range(steps - 1, -1, -1))
    x0, noise, t = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4), torch.tensor([3, 40])
    x_prev, x0_hat = schedule.ddim_step(schedule.add_noise(x0, noise, t), noise, t, torch.full((2,), -1))
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)  # the true eps recovers x0 ...
    torch.testing.assert_close(x_prev, x0_hat)  # ... and the last step returns it


def test_patchgan_maps_patches(make_config):
    cfg = make_config(model={"method": "pix2pix"})
    logits = PatchGAN(cfg.model)(torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="too small"):
        PatchGAN(make_config(model={"image_size": 16, "channel_mult": [1]}).model)


def test_copy_source_picks_the_closest_source(make_config):
    method = _method(make_config, "copy_source")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    x0[..., :8] = -1  # background
    sources = torch.cat([torch.rand(4, 1, 32, 32, generator=g) * 2 - 1, x0 + 0.01, -x0], 1)
    out = method.train_step(x0, sources, 0)
    assert method.generator.best == 1
    assert out["psnr_best_source"] == out["psnr_t2"] > out["psnr_flair"]
    x_p1, x_p2, mutual = method.sample(method.generator, sources, [0] * 4)
    assert torch.equal(mutual, sources[:, 1:2]) and x_p2 is None
    empty = method.train_step(torch.full_like(x0, -1), sources, 1)  # nothing to score: no NaN in the log
    assert set(empty) == {"loss_g"} and method.generator.count == 4
    assert method.optimizers == {} and not list(method.parameters())
