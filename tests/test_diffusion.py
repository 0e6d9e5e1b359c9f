"""The schedule against values computed independently here, and its limits."""
import math

import pytest
import torch

from mudiff import Schedule


def reference_values(T, bmin=0.1, bmax=20.0):
    """Spec section 1, written out in plain Python floats."""
    ts = [i / T * (1 - 1e-3) + 1e-3 for i in range(T + 1)]
    abar = [math.exp(-0.5 * t * t * (bmax - bmin) - t * bmin) for t in ts]
    betas = [1 - abar[i] / abar[i - 1] for i in range(1, T + 1)]
    acp, prev, c1, c2, var = 1.0, 1.0, [], [], []
    for b in betas:
        prev, acp = acp, acp * (1 - b)
        c1.append(b * math.sqrt(prev) / (1 - acp))
        c2.append((1 - prev) * math.sqrt(1 - b) / (1 - acp))
        var.append(b * (1 - prev) / (1 - acp))
    return [1e-8] + betas, c1, c2, var


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_schedule_matches_the_formulas(T):
    s = Schedule(num_timesteps=T, beta_min=0.1, beta_max=20.0)
    betas, c1, c2, var = reference_values(T)
    assert s.betas.shape == (T + 1,) and s.posterior_mean_coef1.shape == (T,)
    for name, ref in [("betas", betas), ("posterior_mean_coef1", c1), ("posterior_mean_coef2", c2),
                      ("posterior_variance", var)]:
        got = getattr(s, name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=1e-9, msg=name)


def test_reference_T4_betas_grow_and_end_near_pure_noise():
    s = Schedule(4)
    assert torch.all(s.betas[1:].diff() > 0)
    assert s.a_cum[-1] < 0.01  # x_T is essentially N(0, I)
    torch.testing.assert_close(s.a_cum**2 + s.sigma_cum**2, torch.ones(5))


def test_forward_pairs_have_the_right_marginals():
    torch.manual_seed(0)
    s = Schedule(4)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    for t in range(4):
        tt = torch.full((x0.shape[0],), t)
        x_t, x_tp1 = s.q_sample_pairs(x0, tt)
        # x_{t+1} | x0 has mean a_cum[t+1] x0 and std sigma_cum[t+1]
        assert abs(x_tp1.mean() - s.a_cum[t + 1] * 0.5) < 0.02
        assert abs(x_tp1.std() - s.sigma_cum[t + 1]) < 0.02
        assert abs(x_t.mean() - s.a_cum[t] * 0.5) < 0.02


def test_posterior_adds_no_noise_at_t0_and_is_x0_there():
    s = Schedule(4)
    x0, x1 = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t0 = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(s.posterior_sample(x0, x1, t0), x0)  # coef1 = 1, coef2 = 0, no noise
    t2 = torch.full((3,), 2)
    a, b = s.posterior_sample(x0, x1, t2), s.posterior_sample(x0, x1, t2)
    assert not torch.allclose(a, b)  # noise is added for t > 0
    # mixed t in one batch: only the t > 0 images are noisy
    t = torch.tensor([0, 3, 0])
    out = s.posterior_sample(x0, x1, t, noise=torch.ones_like(x0))
    torch.testing.assert_close(out[[0, 2]], x0[[0, 2]])


def _constant_denoiser(v1, v2):
    def denoise(x, y, t, z):
        return torch.full_like(x, v1), (None if v2 is None else torch.full_like(x, v2))
    return denoise


def test_sampling_returns_the_mean_of_the_two_predictions():
    s = Schedule(4)
    y = torch.zeros(2, 3, 8, 8)
    x1, x2, mutual = s.sample(_constant_denoiser(0.2, -0.6), y, seeds=[0, 1], z_dim=4)
    torch.testing.assert_close(mutual, torch.full_like(mutual, -0.2))
    torch.testing.assert_close(x1, torch.full_like(x1, 0.2))
    _, none, single = s.sample(_constant_denoiser(0.3, None), y, seeds=[0, 1], z_dim=4)
    assert none is None and torch.allclose(single, torch.full_like(single, 0.3))


def test_sampling_is_seeded_per_image_not_per_batch():
    s = Schedule(4)
    torch.manual_seed(0)
    w = torch.randn(1)

    def denoise(x, y, t, z):  # depends on the noisy input and the latent
        return torch.tanh(x * w + z[:, :1, None, None]), torch.tanh(-x + z[:, 1:2, None, None])

    y = torch.zeros(5, 2, 8, 8)
    _, _, full = s.sample(denoise, y, seeds=[10, 11, 12, 13, 14], z_dim=3)
    _, _, part = s.sample(denoise, y[3:4], seeds=[13], z_dim=3)
    torch.testing.assert_close(full[3:4], part)
    assert not torch.allclose(full[0], full[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_timesteps"):
        Schedule(0)
    with pytest.raises(ValueError, match="beta_min"):
        Schedule(4, beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="one seed per image"):
        Schedule(4).sample(_constant_denoiser(0, 0), torch.zeros(2, 1, 4, 4), seeds=[1], z_dim=2)
