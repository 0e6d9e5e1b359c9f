"""TaskDataset on a tiny prepared dataset: items, task order, errors, memory maps, DataLoader workers."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mudiff.data.dataset import TaskDataset
from mudiff.data.prepare import prepare_dataset
from test_prepare import write_subjects


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    data = write_subjects(tmp_path_factory.mktemp("data"), 4)
    out = tmp_path_factory.mktemp("prepared") / "slices"
    prepare_dataset(data, out, size=16, slices=4, seed=0)
    return out


def test_item_shapes_ranges_and_values(root):
    ds = TaskDataset(root, "t1ce_from_flair_t2_t1", "train")
    assert len(ds) == 8 and len(ds.subjects) == 2 and ds.image_size == 16
    item = ds[3]
    assert item["target"].shape == (1, 16, 16) and item["sources"].shape == (3, 16, 16)
    for key in ("target", "sources"):
        assert item[key].dtype == torch.float32 and -1 <= item[key].min() and item[key].max() <= 1
    assert item["target"].min() == -1  # background
    for key in ("brain_mask", "lesion_mask"):
        assert item[key].shape == (1, 16, 16) and item[key].dtype == torch.float32
        assert set(item[key].unique().tolist()) <= {0.0, 1.0}
    assert item["label"].dtype == torch.int64 and item["label"].shape == (1, 16, 16)
    row = ds.slice_table.iloc[3]
    assert (item["subject"], item["z"], item["index"]) == (row["subject"], row["z"], row["index"])
    assert isinstance(item["subject"], str) and isinstance(item["z"], int)
    stored = np.load(root / "images_t1ce.npy")[item["index"]]
    np.testing.assert_allclose(item["target"][0].numpy(), stored * 2 - 1, atol=1e-6)
    assert set(ds.slice_table["split"]) == {"train"}


def test_sources_follow_the_task_order(root):
    a = TaskDataset(root, "t1ce_from_flair_t2_t1", "val")[0]["sources"]
    b = TaskDataset(root, "t1ce_from_t1_flair_t2", "val")[0]["sources"]
    torch.testing.assert_close(b, a[[2, 0, 1]])
    assert not torch.equal(a[0], a[2])
    item = TaskDataset(root, "flair_from_t1ce", "val")[0]
    torch.testing.assert_close(item["target"], a[:1])
    torch.testing.assert_close(item["sources"], TaskDataset(root, "t1ce_from_t1", "val")[0]["target"])


def test_selection_by_split_and_subject(root):
    everything = TaskDataset(root, "t1_from_t2", "all")
    assert len(everything) == 16 and everything.subjects == ["S0", "S1", "S2", "S3"]
    one = TaskDataset(root, "t1_from_t2", "all", subjects=["S2"])
    assert len(one) == 4 and one.subjects == ["S2"] and {one[i]["subject"] for i in range(4)} == {"S2"}
    test = TaskDataset(root, "t1_from_t2", "test")
    with pytest.raises(ValueError, match=r"\['S9'\] are not in the test split"):
        TaskDataset(root, "t1_from_t2", "test", subjects=["S9"])
    assert len(test) == 4


def test_errors(root, tmp_path):
    with pytest.raises(ValueError, match=r"needs contrast\(s\) \['dwi'\].*available: \['t1', 't1ce', 't2', 'flair'\]"):
        TaskDataset(root, "dwi_from_t1_t2", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        TaskDataset(root, "t1_from_t2", "validation")
    with pytest.raises(ValueError, match="must look like"):
        TaskDataset(root, "t1-t2", "train")
    with pytest.raises(FileNotFoundError, match="python -m mudiff prepare"):
        TaskDataset(tmp_path, "t1_from_t2")
    single = tmp_path / "single"
    prepare_dataset(write_subjects(tmp_path / "data", 1), single, size=16, slices=2)
    with pytest.raises(ValueError, match="the val split .* holds no slice"):
        TaskDataset(single, "t1_from_t2", "val")


def test_memory_mapped_and_pickled_without_the_data(root):
    ds = TaskDataset(root, "t1ce_from_flair_t2_t1", "train")
    assert ds._arrays is None  # nothing opened before the first item
    ds[0]
    assert all(isinstance(a, np.memmap) for a in ds.arrays.values())
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the table, not the arrays (4 x 16 slices of 16x16 float32 = 64 KiB)
    clone = pickle.loads(blob)
    assert clone._arrays is None
    torch.testing.assert_close(clone[5]["sources"], ds[5]["sources"])


def test_dataloader_with_two_workers(root):
    ds = TaskDataset(root, "t1ce_from_flair_t2_t1", "train")
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert [b["sources"].shape for b in batches] == [(3, 3, 16, 16), (3, 3, 16, 16), (2, 3, 16, 16)]
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == sorted(ds.slice_table["index"])
    assert ds._arrays is None  # the workers opened their own maps


def test_maps_are_reopened_so_touched_pages_leave_the_process(root):
    ds = TaskDataset(root, "t1ce_from_flair_t2_t1", "all")
    ds._remap_every = 3
    ds[0]
    first = ds.arrays
    ds[1]
    assert ds.arrays is first
    ds[2]
    assert ds.arrays is not first and isinstance(ds.arrays["t1ce"], np.memmap)
