"""Properties of the LMI layer (../shared/MIDIFFUSION.md section 5), in both modes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from mudiff.models.lmi import candidate_indices, lmi

MODES = ("faithful", "corrected")


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) in [0.05, 0.95]: smooth blobs, like tissue."""
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal((height, width)), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    return torch.from_numpy(0.05 + 0.9 * x).float()[None, None]


def reference_lmi(src: torch.Tensor, tgt: torch.Tensor, patch: int, sigma: float, normalized: bool,
                  mode: str) -> np.ndarray:
    """The published construction, pixel by pixel in float64: tile every target neighbourhood into a (pH, pW)
    image, unfold it again, and take the max of the Parzen MI over the p x p candidates of each pixel."""
    h = patch // 2
    height, width = src.shape[-2:]

    def grey(x):
        return (x * 255).int().double() if mode == "faithful" else x.double().clamp(0, 1) * 255

    s, t = grey(src), grey(tgt)
    hood = F.unfold(t, patch, padding=h).view(patch, patch, height, width)  # (r, c, i, j)
    tiled = hood.permute(2, 0, 3, 1).reshape(patch * height, patch * width)
    tiled_hood = F.unfold(tiled[None, None], patch, padding=h).view(patch, patch, patch * height, patch * width)
    src_hood = F.unfold(s, patch, padding=h).view(patch * patch, height, width).numpy()
    bins = np.linspace(0, 255, patch ** 3)
    width_k = 2 * sigma ** 2

    def mi(a, b):
        ka = np.exp(-0.5 * ((a[:, None] - bins) / width_k) ** 2)
        kb = np.exp(-0.5 * ((b[:, None] - bins) / width_k) ** 2)
        if mode == "faithful":  # the float32 underflow of the published code
            ka, kb = ka.astype(np.float32).astype(np.float64), kb.astype(np.float32).astype(np.float64)
        pa, pb = ka.mean(0), kb.mean(0)
        pa, pb = pa / (pa.sum() + 1e-10), pb / (pb.sum() + 1e-10)
        pab = ka.T @ kb
        pab = pab / (pab.sum() + 1e-10)
        ent = [-(p * np.log2(p + 1e-10)).sum() for p in (pa, pb, pab)]
        value = ent[0] + ent[1] - ent[2]
        return 2 * (value + 1e-10) / (ent[0] + ent[1] + 1e-10) if normalized else value

    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            scores = [mi(src_hood[:, i, j], tiled_hood[:, :, patch * i + a, patch * j + b].reshape(-1).numpy())
                      for a in range(patch) for b in range(patch)]
            out[i, j] = max(scores)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("patch", [3, 5])
def test_equals_direct_per_pixel_computation(mode, patch):
    src = smooth_image(7, 9, seed=1)
    tgt = 1.3 * smooth_image(7, 9, seed=2) - 0.2 + 0.3 * torch.randn(1, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    for normalized in (True, False):
        got = lmi(src, tgt, patch=patch, normalized=normalized, mode=mode)[0, 0].numpy()
        want = reference_lmi(src, tgt, patch, 2.0, normalized, mode)
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_candidate_layout_interior_and_border():
    rows = candidate_indices(10, 3) - 1  # back to unpadded target rows; -1 marks zero padding
    i = 5
    assert (rows[i, 1] - i).tolist() == [-1, 0, 1]  # the centre candidate: the plain neighbourhood
    assert (rows[i, 0] - i).tolist() == [0, -1, 0]
    assert (rows[i, 2] - i).tolist() == [0, 1, 0]
    assert rows[0, 0].tolist() == [-1, -1, 0]  # above the tiled image, then the top row's zero padding
    assert rows[9, 2].tolist() == [9, -1, -1]  # below the target (padding), then outside the tiled image


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalized", [True, False])
def test_flat_image_has_zero_lmi_away_from_borders(mode, normalized):
    flat = torch.full((1, 1, 12, 12), 0.4)
    out = lmi(flat, flat, normalized=normalized, mode=mode)
    assert out[..., 2:-2, 2:-2].abs().max() < 1e-6
    assert out[..., 0, :].abs().max() > 1e-3  # zero padding makes the border structured


@pytest.mark.parametrize("mode", MODES)
def test_intensity_inversion_and_monotone_maps_keep_lmi(mode):
    s = smooth_image(40, 40)
    self_map = lmi(s, s, mode=mode)[..., 2:-2, 2:-2]
    inverted = lmi(s, 1 - s, mode=mode)[..., 2:-2, 2:-2]
    assert (inverted - self_map).abs().mean() < 0.01
    assert abs(lmi(s, s.sqrt(), mode=mode)[..., 2:-2, 2:-2].mean() - self_map.mean()) < 0.2 * self_map.mean()


@pytest.mark.parametrize("mode", MODES)
def test_misalignment_lowers_lmi(mode):
    s = smooth_image(40, 40)
    shifted = torch.roll(s, shifts=(4, 4), dims=(2, 3))
    aligned = lmi(s, s, mode=mode)[..., 6:-6, 6:-6].mean()
    assert lmi(s, shifted, mode=mode)[..., 6:-6, 6:-6].mean() < 0.8 * aligned


def test_faithful_underflow_makes_noise_look_informative():
    s = smooth_image(24, 24)
    far = torch.full_like(s, -1.0)
    assert torch.allclose(lmi(s, far, mode="faithful")[..., 2:-2, 2:-2], torch.tensor(2.0))
    noise = torch.randn(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    assert lmi(s, noise, mode="faithful").mean() > lmi(s, s, mode="faithful").mean()
    # corrected: clipping turns a far-away constant into a flat patch (no information), noise below the image
    assert lmi(s, far, mode="corrected")[..., 2:-2, 2:-2].abs().max() < 1e-6
    assert lmi(s, noise, mode="corrected").mean() < lmi(s, s, mode="corrected").mean()


@pytest.mark.parametrize("mode", MODES)
def test_locality_crop_equality_and_chunking(mode):
    s, t = smooth_image(30, 26, seed=3), smooth_image(30, 26, seed=4)
    full = lmi(s, t, mode=mode)
    changed = t.clone()
    changed[..., 12, 9] += 0.5
    diff = (lmi(s, changed, mode=mode) - full)[0, 0].abs() > 0
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert diff.any() and rows.min() >= 11 and rows.max() <= 13 and cols.min() >= 8 and cols.max() <= 10
    crop = lmi(s[..., 5:25, 4:20], t[..., 5:25, 4:20], mode=mode)
    torch.testing.assert_close(crop[..., 1:-1, 1:-1], full[..., 6:24, 5:19], rtol=0, atol=0)
    torch.testing.assert_close(lmi(s, t, mode=mode, chunk_bytes=1), full, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(64, 64), (24, 40)])
def test_any_size_and_batches(shape):
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(2, 1, *shape, generator=gen), torch.rand(2, 1, *shape, generator=gen)
    out = lmi(src, tgt)
    assert out.shape == (2, 1, *shape) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], lmi(src[1:], tgt[1:]), rtol=0, atol=0)


def test_size_128():
    x = smooth_image(128, 128)
    out = lmi(x, x)
    assert out.shape == (1, 1, 128, 128) and out[..., 2:-2, 2:-2].mean() > 0


def test_clear_errors():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="one shape"):
        lmi(x, torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="odd integer"):
        lmi(x, x, patch=4)
    with pytest.raises(ValueError, match="mode"):
        lmi(x, x, mode="exact")
    with pytest.raises(ValueError, match="sigma"):
        lmi(x, x, sigma=0.0)
