"""MIDiffusion and its SDEdit baseline: target-only training by the shared Trainer, the training inputs, the
LMI-guided translation (seeds, respacing), the schedule, and the errors."""
import pytest
import torch
from torch.utils.data import default_collate

from mudiff.config import load_config
from mudiff.data.dataset import TaskDataset
from mudiff.methods import build_method, no_wrap
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.models.lmi import lmi
from mudiff.sample import Sampler
from mudiff.train import Trainer, read_stats

TASK = "t1_from_t2"
ZERO_SHOT = {"num_sources": 1, "ddpm_timesteps": 40, "ddpm_sampling_steps": 4, "zero_shot_sampling_steps": 5}


def _method(make_config, name="midiffusion", model=None, train=None):
    torch.manual_seed(0)
    cfg = make_config(model={"method": name, **ZERO_SHOT, **(model or {})}, train=train, task=TASK)
    return build_method(cfg).setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)


def _batch(root, n=3):
    data = TaskDataset(root, TASK, "train")
    return default_collate([data[i] for i in range(n)])


def test_published_schedule_values():
    abar = DDPMSchedule(1000).alphas_cumprod
    assert abs(abar[399].item() - 0.1951) < 1e-3 and abs(abar[999].item() - 4.0e-5) < 1e-5


@pytest.mark.parametrize("name", ["midiffusion", "sdedit"])
def test_trains_with_the_shared_trainer_checkpoints_and_translates(make_config, tmp_path, name):
    cfg = make_config(model={"method": name, **ZERO_SHOT}, train={"max_steps": 2, "val_slices": 2}, task=TASK)
    Trainer(cfg, tmp_path / "run").fit()
    records = read_stats(tmp_path / "run" / "stats.jsonl")
    assert [r for r in records if "mse" in r][-1]["step"] == 2 and any("val_psnr_mutual" in r for r in records)
    sampler = Sampler.from_checkpoint(tmp_path / "run")
    sources = _batch(cfg.data.root)["sources"]
    x_p1, x_p2, result = sampler(sources, [0, 1, 2])
    assert x_p2 is None and result.shape == (3, 1, 32, 32) and result.abs().max() <= 1
    expected_channels = 3 if name == "midiffusion" else 1
    assert sampler.method.generator.unet.input_conv.in_channels == expected_channels


def test_training_inputs_channel_order(make_config, tiny_slices):
    method = _method(make_config)
    x0 = (_batch(tiny_slices)["target"] + 1) / 2
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    last = method.schedule.num_timesteps - 1
    t = torch.tensor([0, 10, last])
    inputs, x_t = method.training_inputs(x0, t, noise)
    assert inputs.shape == (3, 3, 32, 32)
    torch.testing.assert_close(inputs[:, :1], method.schedule.add_noise(x0, noise, t))
    torch.testing.assert_close(inputs[:, :1], x_t)
    x_next = method.schedule.add_noise(x0, noise, torch.tensor([1, 11, last]))  # t + 1, clamped at T - 1
    torch.testing.assert_close(inputs[:, 1:2], lmi(x0, x_next))
    torch.testing.assert_close(inputs[:, 2:3], lmi(x0, x0))


def test_training_data_is_the_target_alone_with_its_cached_self_map(make_config, tiny_slices):
    method = _method(make_config)
    train = method.dataset("train")
    item = train[1]
    assert set(item) == {"target", "index", "map"}  # the sources are never read
    x0 = (item["target"][None] + 1) / 2
    torch.testing.assert_close(item["map"], lmi(x0, x0)[0])
    assert train[1]["map"] is item["map"]  # computed once per slice
    assert "sources" in method.dataset("val")[0]  # validation translates the task's source
    batch = default_collate([train[i] for i in range(3)])
    losses = []
    for given in (batch, {k: v for k, v in batch.items() if k != "map"}):  # the map computed on the fly
        method = _method(make_config)
        torch.manual_seed(5)
        losses.append(method.train_batch(given, 0)["mse"])
    torch.testing.assert_close(losses[0], losses[1])


def test_loss_falls_on_a_fixed_batch(make_config, tiny_slices):
    method = _method(make_config, train={"lr_g": 1e-3})
    batch = _batch(tiny_slices)
    x0 = (batch["target"] + 1) / 2
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 40, (3,), generator=g), torch.randn(x0.shape, generator=g)

    def loss():
        with torch.no_grad():
            inputs, x_t = method.training_inputs(x0, t, noise)
            return torch.nn.functional.mse_loss(method.generator(inputs, t, x_t), noise)

    before = loss()
    for step in range(15):
        method.train_batch(batch, step)
    assert loss() < 0.7 * before


def test_translation_is_deterministic_per_seed_and_depends_on_the_source(make_config, tiny_slices):
    method = _method(make_config).eval()
    source = (_batch(tiny_slices)["sources"] + 1) / 2
    whole = method.translate(method.generator, source, [7, 8, 9], "t2")
    alone = method.translate(method.generator, source[2:], [9], "t2")
    torch.testing.assert_close(whole[2:], alone, atol=1e-5, rtol=0)
    assert torch.equal(whole, method.translate(method.generator, source, [7, 8, 9], "t2"))
    other = method.translate(method.generator, source.flip(0), [7, 8, 9], "t2")
    assert not torch.allclose(other, whole)
    assert (whole >= 0).all() and (whole <= 1).all()


def test_translation_feeds_the_float32_lmi_maps_of_training_under_mixed_precision():
    """bf16 autocast (the default on CUDA) must not reach the LMI layer: training builds the maps in float32."""
    cfg = load_config(None, [f"data.task={TASK}", "model.method=midiffusion", "model.num_sources=1",
                             "model.image_size=32", "model.base_channels=8", "model.channel_mult=[1, 2]",
                             "model.num_res_blocks=1", "model.ddpm_timesteps=40", "model.ddpm_sampling_steps=4",
                             "model.zero_shot_sampling_steps=3"])
    torch.manual_seed(0)
    method = build_method(cfg).setup(torch.device("cpu"), torch.bfloat16, torch.contiguous_format, no_wrap).eval()
    seen = []

    def spy(inputs, t, x):
        seen.append((inputs, x))
        return method.generator(inputs, t, x)

    source = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    method.translate(spy, source, [0, 1], "t2")
    assert len(seen) == 3
    for inputs, x in seen:
        assert inputs.dtype == torch.float32
        torch.testing.assert_close(inputs[:, 1:2], lmi(source, x), rtol=0, atol=0)
        torch.testing.assert_close(inputs[:, 2:3], lmi(source, source), rtol=0, atol=0)


def test_reverse_chain_time_steps(make_config, tiny_slices):
    method = _method(make_config)
    assert method.timesteps(40) == list(range(39, -1, -1))  # the published chain: every step, from pure noise
    assert method.timesteps(5) == [39, 29, 20, 10, 0] and method.network_evaluations == 5
    seen = []
    source = (_batch(tiny_slices, 1)["sources"] + 1) / 2
    method.translate(method.generator, source, [0], steps=4, on_step=lambda t, x: seen.append(t))
    assert seen == [26, 13, 0, -1]
    sdedit = _method(make_config, "sdedit", model={"sdedit_start": 0.5})
    assert sdedit.timesteps(40) == list(range(19, -1, -1)) and len(sdedit.timesteps(10)) == 5


def test_sdedit_from_a_small_noise_level_returns_the_source(make_config, tiny_slices):
    method = _method(make_config, "sdedit", model={"sdedit_start": 0.001, "ddpm_timesteps": 1000,
                                                    "zero_shot_sampling_steps": 1000}).eval()  # t0 = 0
    assert method.timesteps() == [0]  # alpha_bar_0 = 0.9999: noise of std 0.01
    source = (_batch(tiny_slices)["sources"] + 1) / 2
    out = method.translate(method.generator, source, [0, 1, 2], "t2")
    assert (out - source.clamp(0, 1)).abs().mean() < 0.02


def test_clear_errors(make_config, tiny_slices):
    method = _method(make_config)
    source = (_batch(tiny_slices, 1)["sources"] + 1) / 2
    with pytest.raises(ValueError, match="trained on"):
        method.translate(method.generator, source, [0], source_contrast="t1")
    with pytest.raises(ValueError, match="32x32"):
        method.translate(method.generator, torch.rand(1, 1, 16, 16), [0])
    with pytest.raises(ValueError, match="lmi_mode='faithful'"):
        method.translate(method.generator, source, [0], lmi_mode="corrected")
    with pytest.raises(ValueError, match="one seed per image"):
        method.translate(method.generator, source, [0, 1])
    with pytest.raises(ValueError, match="one source contrast"):
        make_config(model={"method": "midiffusion", "num_sources": 3})
    with pytest.raises(ValueError, match="model.lmi_mode"):
        make_config(model={"method": "midiffusion", "lmi_mode": "exact", "num_sources": 1}, task=TASK)
