"""k-space motion simulator: identity at severity 0, ghosts along the phase-encode axis, seeding."""
import numpy as np
import pytest

from mudiff.evaluation.motion import motion_corrupt, motion_corrupt_batch

H = 64


@pytest.fixture(scope="module")
def disk() -> np.ndarray:
    """A bright disk with a gradient in the middle of a black (H, H) image: ghosts show in the background."""
    yy, xx = np.mgrid[:H, :H]
    return ((((yy - H / 2) ** 2 + (xx - H / 2) ** 2) < (H / 4.5) ** 2) * (0.5 + 0.3 * xx / H)).astype(np.float32)


def test_severity_zero_is_identity(disk):
    out = motion_corrupt(disk, 0.0, seed=3)
    assert out.dtype == disk.dtype and out.shape == disk.shape
    np.testing.assert_allclose(out, disk, atol=1e-6)


@pytest.mark.parametrize("phase_axis", [0, 1])
def test_ghosts_lie_along_the_phase_encode_axis(disk, phase_axis):
    """Artefact energy in the background beside the object along the phase-encode axis dwarfs that along the
    read-out axis (each read-out line is acquired instantly, so motion cannot smear along it)."""
    outside, inside = np.r_[0:14, H - 13:H], np.r_[20:H - 19]  # background bands / the object's extent
    along_rows = along_cols = 0.0
    for seed in range(4):
        err = (motion_corrupt(disk, 1.0, seed, phase_axis=phase_axis) - disk) ** 2
        along_rows += err[np.ix_(outside, inside)].sum()  # above and below the object
        along_cols += err[np.ix_(inside, outside)].sum()  # left and right of it
    ratio = along_rows / along_cols if phase_axis == 0 else along_cols / along_rows
    assert ratio > 5


def test_error_grows_with_severity(disk):
    errors = [np.mean([np.abs(motion_corrupt(disk, s, seed) - disk).mean() for seed in range(6)])
              for s in (0.25, 0.5, 1.0)]
    assert errors[0] > 1e-3 and np.all(np.diff(errors) > 0)


def test_seeding_and_batch(disk):
    a = motion_corrupt(disk, 0.7, seed=5)
    np.testing.assert_array_equal(a, motion_corrupt(disk, 0.7, seed=5))
    assert np.abs(a - motion_corrupt(disk, 0.7, seed=6)).mean() > 1e-3
    batch = np.stack([disk, disk[::-1], disk.T])
    out = motion_corrupt_batch(batch, 0.7, seeds=10)
    for i in range(3):  # slice i gets seed 10 + i whatever the batch
        np.testing.assert_array_equal(out[i], motion_corrupt(batch[i], 0.7, 10 + i))
    np.testing.assert_array_equal(motion_corrupt_batch(batch[1:], 0.7, seeds=[11, 12]), out[1:])
    with pytest.raises(ValueError, match="seeds"):
        motion_corrupt_batch(batch, 0.7, seeds=[1, 2])
    with pytest.raises(ValueError, match="severity"):
        motion_corrupt(disk, 1.5, seed=0)
