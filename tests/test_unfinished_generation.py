"""A phantom generator that stops part-way leaves its folder marked, and every reader refuses it until it is made
again (never a silently smaller or half-written dataset)."""

import pytest

import mudiff.data.head_phantom as head_phantom
import mudiff.data.phantom as phantom
from mudiff.data.subjects import UNFINISHED, DataError, find_subjects
from mudiff.data.synthrad import find_synthrad_subjects
from mudiff.demo import ensure_phantom


def fail_at_second_subject(write):
    def wrapped(*args, **kwargs):
        if wrapped.calls == 1:
            raise RuntimeError("killed while writing")
        wrapped.calls += 1
        return write(*args, **kwargs)

    wrapped.calls = 0
    return wrapped


def test_interrupted_phantom_is_refused_until_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(phantom, "_make_and_write", fail_at_second_subject(phantom._make_and_write))
    with pytest.raises(RuntimeError, match="killed"):
        phantom.generate_dataset(tmp_path, 2, resolution=4.0, workers=1)
    assert (tmp_path / phantom.subject_id("tumour", 0)).is_dir() and (tmp_path / UNFINISHED).is_file()
    with pytest.raises(DataError, match="has not finished"):
        find_subjects(tmp_path)
    with pytest.raises(DataError, match="has not finished"):
        ensure_phantom(tmp_path, 2, resolution=4.0)
    monkeypatch.undo()
    phantom.generate_dataset(tmp_path, 2, resolution=4.0, workers=1, overwrite=True)
    assert not (tmp_path / UNFINISHED).exists()
    assert [s.id for s in find_subjects(tmp_path)] == [phantom.subject_id("tumour", i) for i in range(2)]


def test_interrupted_head_phantom_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(head_phantom, "write_head_subject", fail_at_second_subject(head_phantom.write_head_subject))
    with pytest.raises(RuntimeError, match="killed"):
        head_phantom.generate_head_dataset(tmp_path, 2, kind="healthy", resolution=4.0)
    assert len(list(tmp_path.glob("*/mr.nii.gz"))) == 1
    with pytest.raises(DataError, match="generate_head_dataset started writing"):
        find_synthrad_subjects(tmp_path)
