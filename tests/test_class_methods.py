"""Class-conditioned generators (class_ddpm, wgan_gp, cwgan_gp): trained by the shared Trainer on labelled slices,
conditioning, guidance, per-image seeds, the gradient penalty, resume."""
import pytest
import torch
from torch import nn

from mudiff.config import RunConfig
from mudiff.data.labelled import phantom_class_slices
from mudiff.methods import build_method, no_wrap
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.methods.wgan_gp import gradient_penalty
from mudiff.models.class_nets import ClassConditionalUNet, WGANCritic
from mudiff.train import Trainer, read_stats

MODEL = dict(method="class_ddpm", image_size=32, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, z_dim=8,
             style_dim=16, critic_channels=8, num_classes=3, image_channels=1, ddpm_timesteps=50, ddpm_sampling_steps=4)
TRAIN = dict(epochs=1, batch_size=4, checkpoint_every=2, log_every=1, val_slices=4, ema_decay=0.9, seed=0,
             n_critic=2)


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled") / "slices"
    return phantom_class_slices(out, {"healthy": 3, "glioma": 3, "meningioma": 3}, size=32, slices_per_subject=3,
                                split=(0.34, 0.33, 0.33), seed=0)


def config(root, model=None, train=None) -> RunConfig:
    return RunConfig.from_dict({"data": {"root": str(root)}, "model": {**MODEL, **(model or {})},
                                "train": {**TRAIN, **(train or {})}})


def _ready(cfg):
    torch.manual_seed(0)
    return build_method(cfg).setup(torch.device("cpu"), None, torch.contiguous_format, no_wrap)


@pytest.mark.parametrize("conditioning", ["embedding", "faithful"])
def test_the_label_changes_the_prediction(conditioning):
    cfg = config("unused", {"class_conditioning": conditioning}).model
    net = ClassConditionalUNet(cfg)
    for p in net.label_embed.parameters():  # a trained-like, non-trivial label term
        nn.init.normal_(p, 0, 1)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 10])
    a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 2]))
    assert (a - b).abs().max() > 1e-3


def test_the_unconditional_model_ignores_labels_and_bad_labels_are_errors():
    net = ClassConditionalUNet(config("unused", {"class_conditioning": "none"}).model)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 7])
    assert torch.equal(net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 2])))
    embedded = ClassConditionalUNet(config("unused").model)
    embedded(x, t, torch.tensor([0, 3]))  # 3 = the null label
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        embedded(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="one label per image"):
        embedded(x, t, torch.tensor([0]))


def test_guidance_scale_0_is_the_unconditional_and_1_the_conditional_prediction():
    method = _ready(config("unused"))
    net = method.generator
    nn.init.normal_(net.label_embed.weight, 0, 1)
    x, t, y = torch.randn(3, 1, 32, 32), torch.tensor([5, 20, 40]), torch.tensor([0, 1, 2])
    null = torch.full_like(y, net.null_label)
    torch.testing.assert_close(method.predict_noise(net, x, t, y, 0.0), net(x, t, null), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(method.predict_noise(net, x, t, y, 1.0), net(x, t, y))
    guided = method.predict_noise(net, x, t, y, 3.0)
    expected = net(x, t, null) + 3.0 * (net(x, t, y) - net(x, t, null))
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-4)


def test_guidance_needs_a_trained_null_label():
    method = _ready(config("unused", {"label_dropout": 0.0, "guidance_scale": 1.0}))  # plain conditional: fine
    with pytest.raises(ValueError, match="never trained"):
        method.generate(method.generator, torch.tensor([0, 1]), [0, 1], guidance_scale=2.0)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_generation_is_per_image_seeded_and_in_range(sampler):
    method = _ready(config("unused", {"class_sampler": sampler, "ddpm_timesteps": 20}))
    net = method.generator.eval()
    labels = torch.tensor([0, 1, 2, 1])
    batch = method.generate(net, labels, [5, 6, 7, 8])
    alone = method.generate(net, labels[2:3], [7])
    assert batch.shape == (4, 1, 32, 32) and batch.abs().max() <= 1
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batch[1], batch[3])  # same class, other seed
    assert method.network_evaluations == (4 if sampler == "ddim" else 20) * 2


def test_ancestral_step_matches_ho_et_al():
    schedule = DDPMSchedule(10, beta_end=0.04)
    abar = schedule.alphas_cumprod
    x, eps, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([9, 4, 0])
    out = schedule.ancestral_step(x, eps, t, t - 1, noise)
    for k, step in enumerate(t.tolist()):
        alpha = abar[step] / (abar[step - 1] if step > 0 else 1.0)
        beta = 1 - alpha
        expected = (x[k] - beta / (1 - abar[step]).sqrt() * eps[k]) / alpha.sqrt() + (step > 0) * beta.sqrt() * noise[k]
        torch.testing.assert_close(out[k], expected)
    assert schedule.alphas_cumprod[-1] < DDPMSchedule(10).alphas_cumprod[-1]  # beta_end 0.04 noises faster


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2 whatever the inputs."""
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.arange(16.0).view(1, 16) / 10)
    norm = critic[1].weight.norm()
    gp = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4))
    torch.testing.assert_close(gp, (norm - 1) ** 2)
    gp.backward()
    assert critic[1].weight.grad is not None and critic[1].weight.grad.abs().sum() > 0


def test_the_projection_critic_starts_at_the_unconditional_critics_scale():
    """The class embedding is drawn like the score head (N(0, 0.02)), so its term does not swamp the score."""
    cfg = config("unused", {"method": "cwgan_gp"}).model
    torch.manual_seed(0)
    conditional, plain = WGANCritic(cfg, conditional=True), WGANCritic(cfg, conditional=False)
    assert conditional.embed.weight.std().item() == pytest.approx(0.02, rel=0.2)
    x, labels = torch.rand(16, 1, 32, 32) * 2 - 1, torch.arange(16) % 3
    with torch.no_grad():
        assert conditional(x, labels).std() < 3 * plain(x).std()


@pytest.mark.parametrize("name", ["class_ddpm", "wgan_gp", "cwgan_gp"])
def test_trained_by_the_shared_trainer(labelled_root, tmp_path, name):
    cfg = config(labelled_root, {"method": name}, {"max_steps": 3})
    trainer = Trainer(cfg, tmp_path / name).fit()
    records = read_stats(tmp_path / name / "stats.jsonl")
    assert [r["step"] for r in records if "loss_g" in r][-1] == 3
    assert any("val_class_mean_mae" in r for r in records)
    images = trainer.method.generate(trainer.ema, torch.tensor([0, 1, 2]), [0, 1, 2])
    assert images.shape == (3, 1, 32, 32) and torch.isfinite(images).all() and images.abs().max() <= 1


def test_class_ddpm_loss_falls_on_a_fixed_batch(labelled_root):
    method = _ready(config(labelled_root, train={"lr_g": 2e-3}))
    data = method.dataset("train")
    x0, labels = data.images[:8], data.labels[:8]
    torch.manual_seed(1)
    first = sum(method.train_labelled(x0, labels, s)["mse"] for s in range(3)) / 3
    for step in range(3, 40):
        method.train_labelled(x0, labels, step)
    last = sum(method.train_labelled(x0, labels, s)["mse"] for s in range(40, 43)) / 3
    assert last < 0.7 * first, (first, last)


def test_resume_continues_the_same_run(labelled_root, tmp_path):
    # 3 steps per epoch: the resumed half stops inside the first epoch, the run ends inside the second
    cfg = config(labelled_root, train={"epochs": 2, "max_steps": 4, "val_slices": 0, "checkpoint_every": 2})
    straight = Trainer(cfg, tmp_path / "straight").fit()
    assert straight.step == 4
    half = config(labelled_root, train={"epochs": 2, "max_steps": 2, "val_slices": 0, "checkpoint_every": 2})
    Trainer(half, tmp_path / "resumed").fit()
    resumed = Trainer(cfg, tmp_path / "resumed")
    assert resumed.step == 2
    resumed.fit()
    for a, b in zip(straight.method.generator.state_dict().values(), resumed.method.generator.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_data_that_do_not_fit_the_config(labelled_root):
    with pytest.raises(ValueError, match="model.num_classes=2 but the data have 3"):
        _ready(config(labelled_root, {"num_classes": 2})).dataset("train")
    with pytest.raises(ValueError, match="model.image_channels=2 but the data have 1"):
        _ready(config(labelled_root, {"image_channels": 2})).dataset("train")


def test_paired_synthesis_refuses_class_runs_and_labelled_data(labelled_root, tmp_path):
    from mudiff.data.dataset import TaskDataset
    from mudiff.sample import Sampler

    Trainer(config(labelled_root, train={"max_steps": 1}), tmp_path / "run").fit()
    with pytest.raises(ValueError, match="generates images of a class"):
        Sampler.from_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match="labelled_slices data, not the contrast slices"):
        TaskDataset(labelled_root, "t1ce_from_t1")


@pytest.mark.parametrize("field, value, message", [
    ("class_conditioning", "concat", "model.class_conditioning must be one of"),
    ("class_sampler", "euler", "model.class_sampler must be one of"),
    ("label_dropout", 1.0, "model.label_dropout must be in"),
    ("guidance_scale", -1.0, "model.guidance_scale must be >= 0"),
    ("label_dropout", 0.0, "needs the null label"),  # guidance_scale 2 with a null label never trained
    ("num_classes", 0, "model.num_classes must be > 0"),
])
def test_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        config("unused", {field: value})
    with pytest.raises(ValueError, match="train.gp_weight"):
        config("unused", train={"n_critic": 0})
