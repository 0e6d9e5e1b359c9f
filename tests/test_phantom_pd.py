"""The optional proton-density-weighted phantom contrast (``extra_contrasts=("pd",)``)."""
import json

import numpy as np
import pytest

from mudiff.data.phantom import generate_dataset, generate_subject
from mudiff.data.prepare import prepare_dataset
from mudiff.data.subjects import find_subjects


@pytest.fixture(scope="module")
def pair():
    """(without, with) the PD contrast: the same subject, 4 mm."""
    return (generate_subject(0, 5, "tumour", resolution=4.0),
            generate_subject(0, 5, "tumour", resolution=4.0, extra_contrasts=("pd",)))


def tissue_median(subject, contrast, tissue):
    mask = (subject.tissue[tissue] > 0.8) & (subject.seg == 0) if tissue in ("csf", "gm", "wm") else \
        subject.seg == {"oedema": 2}[tissue]
    return float(np.median(subject.images[contrast][mask]))


def test_pd_is_added_without_changing_the_other_contrasts(pair):
    plain, with_pd = pair
    assert list(with_pd.images) == ["t1", "t1ce", "t2", "flair", "pd"]
    for c in plain.images:
        np.testing.assert_array_equal(plain.images[c], with_pd.images[c])
    np.testing.assert_array_equal(plain.seg, with_pd.seg)


def test_pd_weighted_orderings(pair):
    s = pair[1]
    med = {t: tissue_median(s, "pd", t) for t in ("gm", "wm", "oedema")}
    assert med["gm"] > med["wm"] and med["oedema"] > med["wm"]  # PD-like: grey over white, unlike T1
    assert tissue_median(s, "t1", "wm") > tissue_median(s, "t1", "gm")
    # the flattest grey/white contrast of the set (proton density differs by ~15 % only)
    ratio = {c: tissue_median(s, c, "gm") / tissue_median(s, c, "wm") for c in ("pd", "t2")}
    assert 1.0 < ratio["pd"] < ratio["t2"]


@pytest.mark.filterwarnings("ignore:the test split holds no subject")
def test_written_loaded_and_prepared(tmp_path):
    generate_dataset(tmp_path / "ph", 2, seed=3, resolution=4.0, workers=1, extra_contrasts=("pd",))
    subjects = find_subjects(tmp_path / "ph")
    assert all("pd" in s.images for s in subjects)
    prepare_dataset(tmp_path / "ph", tmp_path / "slices", size=16, slices=2, split=(0.5, 0.5, 0.0))
    assert "pd" in json.loads((tmp_path / "slices" / "manifest.json").read_text())["contrasts"]


def test_unknown_extra_contrast_is_an_error():
    with pytest.raises(ValueError, match="extra_contrasts"):
        generate_subject(0, 0, "tumour", resolution=4.0, extra_contrasts=("t1",))


def test_ensure_phantom_reuses_a_folder_and_warns_when_it_was_made_with_other_contrasts(tmp_path):
    import warnings

    from mudiff.demo import ensure_phantom

    (tmp_path / "sub-0").mkdir()
    record = {"n_subjects": 1, "seed": 0, "resolution": 2.0, "kind": "tumour",
              "contrasts": ["t1", "t1ce", "t2", "flair", "pd"]}
    (tmp_path / "phantom.json").write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ensure_phantom(tmp_path, 1, extra_contrasts=("pd",)) == tmp_path  # as asked: used, no warning
        (tmp_path / "phantom.json").write_text(json.dumps({k: v for k, v in record.items() if k != "contrasts"}))
        ensure_phantom(tmp_path, 1)  # a record from before the field: nothing known to differ
    (tmp_path / "phantom.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="'contrasts'"):
        ensure_phantom(tmp_path, 1)  # made with PD, asked without
