"""The sampler: rebuilt from a run folder, per-slice seeds, whole volumes as NIfTI, batches that fit the GPU, clear
input errors."""
import subprocess
import sys
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mudiff.checkpoint import checkpoint_config, load_checkpoint
from mudiff.config import replace
from mudiff.data.dataset import TaskDataset
from mudiff.data.subjects import find_subjects
from mudiff.methods import build_method
from mudiff.sample import SEED_STRIDE, Sampler, resolve_batch_size, seeded_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def test_output_does_not_depend_on_the_batch_size(run_dir, tiny_slices):
    sampler = Sampler.from_checkpoint(run_dir)
    data = TaskDataset(tiny_slices, sampler.cfg.data.task, "test")
    whole = sampler.synthesise_dataset(data, seed=5, batch_size=len(data), progress=False)
    ones = sampler.synthesise_dataset(data, indices=[2, 0], seed=5, batch_size=1, progress=False)
    # same noise and latents per slice; conv kernels may round differently per batch size (~1e-6)
    np.testing.assert_allclose(whole.mutual[[2, 0]], ones.mutual, atol=1e-5)
    np.testing.assert_allclose(whole.x_p2[[2, 0]], ones.x_p2, atol=1e-5)
    assert whole.mutual.shape == (len(data), 32, 32) and 0 <= whole.mutual.min() and whole.mutual.max() <= 1
    np.testing.assert_allclose(whole.mutual, (whole.x_p1 + whole.x_p2) / 2, atol=1e-5)
    other = sampler.synthesise_dataset(data, indices=[0], seed=6, batch_size=1, progress=False)
    assert np.abs(other.mutual - ones.mutual[1:]).max() > 1e-2  # another seed, another sample


def test_the_sampler_lays_out_its_networks_as_training_does_with_the_same_output(run_dir, tiny_slices):
    state = load_checkpoint(run_dir)
    cfg = checkpoint_config(state)
    data = TaskDataset(tiny_slices, cfg.data.task, "test")
    outputs = {}
    for channels_last, layout in ((None, torch.channels_last), (False, torch.contiguous_format)):
        method = build_method(cfg)
        method.load_state_dict(state["method"])
        sampler = Sampler(method, replace(cfg, train={"channels_last": channels_last}), "cpu")
        weights = [p for p in sampler.method.generator.parameters() if p.ndim == 4 and p.shape[1] > 1]
        assert weights and all(p.is_contiguous(memory_format=layout) for p in weights)
        outputs[layout] = sampler.synthesise_dataset(data, indices=[0, 1], seed=3, progress=False).mutual
    # auto = channels-last on a CPU, as training: the same images
    np.testing.assert_allclose(outputs[torch.channels_last], outputs[torch.contiguous_format], atol=1e-5)


def test_without_a_batch_size_a_gpu_takes_a_whole_volume_per_call_and_a_cpu_eight_slices():
    assert resolve_batch_size(None, torch.device("cuda")) == 80
    assert resolve_batch_size(None, torch.device("cpu")) == 8
    assert resolve_batch_size(3, torch.device("cuda")) == 3
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        resolve_batch_size(0, torch.device("cpu"))


class Activations:
    """Stands for a batch's GPU tensors."""


def test_a_batch_that_runs_out_of_gpu_memory_is_run_again_in_halves_after_its_tensors_are_freed():
    calls, failed = [], []

    def run(positions, seeds):
        activations = Activations()  # referenced by this frame, so by the traceback of an error raised here
        assert all(ref() is None for ref in failed), "the failed batch's tensors are still held"
        calls.append(positions.stop - positions.start)
        if positions.stop - positions.start > 3:
            failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return seeds

    ids = [10, 11, 12, 13, 14, 15, 16]
    with pytest.warns(UserWarning, match="out of GPU memory at 7 slices per batch; going on with 3"):
        seeds = seeded_batches(run, ids, 2, None, torch.device("cuda"), desc="test")
    assert calls == [7, 3, 3, 1]  # 80 -> the 7 slices fail, 3 fit and stay the size
    assert sum(seeds, []) == [2 * SEED_STRIDE + i for i in ids]  # every slice once, in order, seeded by its index

    def never_fits(positions, seeds):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.warns(UserWarning), pytest.raises(torch.OutOfMemoryError):
        seeded_batches(never_fits, ids, 0, 4, torch.device("cuda"))


def test_whole_subject_volume_is_written_with_the_source_affine(run_dir, phantom_dir, tmp_path):
    subject = find_subjects(phantom_dir)[-1]
    out = tmp_path / "syn.nii.gz"
    result = subprocess.run([sys.executable, "-m", "mudiff", "sample", "--checkpoint", str(run_dir), "--subject",
                             str(subject.images["flair"].parent), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    written, source = nib.load(out), nib.load(subject.images["flair"])
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    volume = np.asarray(written.dataobj)
    assert np.isfinite(volume).all() and volume.min() >= 0 and volume.max() <= 1
    # background stays empty, up to the brain mask's 32-pixel resolution at its edge
    assert (volume[np.asarray(source.dataobj) == 0] == 0).mean() > 0.9
    assert volume.max() > 0


def test_a_subject_stored_lps_gets_its_volume_back_in_its_own_axis_order(run_dir, phantom_dir, tmp_path):
    """The same head stored RAS (the phantom) and LPS (as BraTS is: x and y reversed, the affine to match): the
    results are the same voxels in each subject's own order, with its own affine."""
    subject = find_subjects(phantom_dir)[-1]
    folder = subject.images["flair"].parent
    lps = tmp_path / folder.name
    lps.mkdir()
    for path in folder.iterdir():
        image = nib.load(path)
        nx, ny = image.shape[:2]
        reverse_xy = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1, ::-1], image.affine @ reverse_xy), lps / path.name)
    assert "".join(nib.aff2axcodes(nib.load(lps / subject.images["flair"].name).affine)) == "LPS"
    sampler = Sampler.from_checkpoint(run_dir)
    ras_result, lps_result = (sampler.synthesise_subject(f, progress=False) for f in (folder, lps))
    np.testing.assert_allclose(lps_result.affine, nib.load(lps / subject.images["flair"].name).affine)
    np.testing.assert_allclose(np.asarray(lps_result.dataobj), np.asarray(ras_result.dataobj)[::-1, ::-1], atol=1e-5)


def test_a_volume_is_never_written_into_the_subjects_folder_or_under_a_non_nifti_name(run_dir, phantom_dir, tmp_path):
    subject = find_subjects(phantom_dir)[-1]
    folder = subject.images["t1ce"].parent
    truth = subject.images["t1ce"].read_bytes()
    sampler = Sampler.from_checkpoint(run_dir)
    with pytest.raises(ValueError, match="inside the subject's folder"):  # e.g. over the real T1CE
        sampler.synthesise_subject(folder, subject.images["t1ce"], progress=False)
    assert subject.images["t1ce"].read_bytes() == truth
    for bad in (tmp_path / "synthetic.png", tmp_path):
        with pytest.raises(ValueError, match="NIfTI file name"):
            sampler.synthesise_subject(folder, bad, progress=False)


def test_bad_inputs_are_refused(run_dir):
    sampler = Sampler.from_checkpoint(run_dir)
    with pytest.raises(ValueError, match="sources must be"):
        sampler(torch.zeros(1, 2, 32, 32), [0])
    with pytest.raises(ValueError, match="NaN"):
        sampler(torch.full((1, 3, 32, 32), float("nan")), [0])
    with pytest.raises(FileNotFoundError):
        Sampler.from_checkpoint(run_dir / "nope")
