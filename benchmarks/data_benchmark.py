"""Data benchmark: phantom generation speed, and peak memory of preparing and of iterating BraTS-sized data.

Writes ``benchmarks/results/data_cpu.json``. The claim it checks: preparing and training-time loading hold one
subject (or one batch) in memory, never the dataset, so peak memory stays flat as the number of subjects grows,
while the dataset on disk grows linearly (BraTS 2019, 335 subjects x 80 slices at 256^2, is ~18 GB in float32).

Memory is measured in fresh processes (spawned, so one measurement does not inherit another's peak):
``rss_anon`` is the private memory (heap, arrays) sampled from /proc every 20 ms, which is what must not grow;
``ru_maxrss`` also counts pages of memory-mapped files, which the kernel can drop at any time.

    python benchmarks/data_benchmark.py --subjects 8 32 --phantom-subjects 2 --phantom-resolution 1
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import psutil

BRATS_SHAPE = (240, 240, 155)
BRATS_SUBJECTS = 335
CONTRASTS = ("t1", "t1ce", "t2", "flair")
MIB = 2 ** 20


class PeakSampler:
    """Peaks of the summed resident memory of this process and its children (DataLoader workers), from /proc:
    ``anon`` (RssAnon, private memory) and ``total`` (VmRSS, which adds the mapped file pages)."""

    FIELDS = {"anon": "RssAnon:", "total": "VmRSS:"}

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, dict.fromkeys(self.FIELDS, 0), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def _read(cls, pid: int) -> dict[str, int]:
        try:
            with open(f"/proc/{pid}/status") as f:
                lines = {line.split()[0]: int(line.split()[1]) * 1024 for line in f if line.endswith("kB\n")}
            return {key: lines[field] for key, field in cls.FIELDS.items()}
        except (OSError, KeyError):  # a worker that just exited
            return dict.fromkeys(cls.FIELDS, 0)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            readings = [self._read(p) for p in [me.pid, *(c.pid for c in me.children(recursive=True))]]
            for key in self.FIELDS:
                self.peak[key] = max(self.peak[key], sum(r[key] for r in readings))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _memory(sampler: PeakSampler) -> dict:
    # ru_maxrss of the measuring process itself, for comparison; the parent runs nothing heavy, since Linux
    # carries a forked parent's peak into the spawned child's ru_maxrss
    return {"rss_anon_peak_mib": round(sampler.peak["anon"] / MIB, 1),
            "rss_peak_mib": round(sampler.peak["total"] / MIB, 1),
            "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _in_child(function, *args) -> dict:
    """Run ``function(*args) -> dict`` in a fresh spawned process and return its result."""
    # an executor, not a Pool: its workers may start processes of their own (DataLoader workers)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _baseline() -> dict:
    """Memory of a process that only imported what the measured ones import."""
    import mudiff.data.dataset  # noqa: F401  (torch, pandas, scipy, nibabel)

    with PeakSampler() as sampler:
        time.sleep(0.2)
    return _memory(sampler)


def _prepare(raw: str, out: str, size: int, slices: int) -> dict:
    import warnings

    from mudiff.data.prepare import prepare_dataset

    warnings.simplefilter("ignore")  # the benchmark's split warnings are not news
    start = time.perf_counter()
    with PeakSampler() as sampler:
        prepare_dataset(raw, out, size=size, slices=slices, overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), **_memory(sampler)}


def _iterate(root: str, batch_size: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from mudiff.data.dataset import TaskDataset

    torch.set_num_threads(1)
    dataset = TaskDataset(root, "t1ce_from_flair_t2_t1", "all")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, seen, first = time.perf_counter(), 0, None
    with PeakSampler() as sampler:
        for batch in loader:
            first = first or time.perf_counter()  # after the workers started
            seen += len(batch["index"])
    end = time.perf_counter()
    steady = (seen - batch_size) / (end - first) if seen > batch_size else float("nan")
    return {"slices": seen, "seconds": round(end - start, 2), "first_batch_seconds": round(first - start, 2),
            "slices_per_second_after_first_batch": round(steady, 1), "batch_size": batch_size,
            "num_workers": workers, **_memory(sampler)}


def write_brats_like(root: Path, first: int, last: int) -> None:
    """Subjects first..last-1: BraTS-sized float32 volumes (ellipsoid brain, lesion, noise) and a 1/2/4 label."""
    import nibabel as nib

    x, y, z = np.ogrid[:BRATS_SHAPE[0], :BRATS_SHAPE[1], :BRATS_SHAPE[2]]
    r = ((x - 120) / 75.0) ** 2 + ((y - 120) / 90.0) ** 2 + ((z - 75) / 65.0) ** 2
    brain = r <= 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for i in range(first, last):
        rng = np.random.default_rng(i)
        cx, cy, cz = rng.integers([90, 90, 50], [150, 150, 100])
        d = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        label = (np.select([d <= 36, d <= 144, d <= 400], [4, 1, 2], 0) * brain).astype(np.uint8)
        folder = root / f"BraTS_Synth_{i:03d}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(label, affine), folder / f"{folder.name}_seg.nii.gz")
        for k, c in enumerate(CONTRASTS):
            tissue = 300 + 200 * k * (1 - r) + 150 * (label > 0) * (k - 1.5)
            volume = (brain * (tissue + rng.normal(0, 20, BRATS_SHAPE))).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, affine), folder / f"{folder.name}_{c}.nii.gz")


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def phantom_speed(subjects: int, resolution: float, workdir: Path) -> dict:
    if find_spec("mudiff.data.phantom") is None:
        return {"skipped": "mudiff.data.phantom is not in this checkout"}
    from mudiff.data.phantom import generate_dataset

    workers = os.cpu_count()
    start = time.perf_counter()
    generate_dataset(workdir / "phantom", subjects, seed=0, kind="tumour", resolution=resolution, workers=workers)
    seconds = time.perf_counter() - start
    return {"subjects": subjects, "resolution_mm": resolution, "workers": workers, "seconds": round(seconds, 2),
            "subjects_per_second": round(subjects / seconds, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[8, 32], help="dataset sizes to compare")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--phantom-subjects", type=int, default=2)
    parser.add_argument("--phantom-resolution", type=float, default=2.0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_cpu.json"))
    args = parser.parse_args(argv)
    sizes = sorted(set(args.subjects))

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mudiff-data-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
                    "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__},
        "settings": {"volume_shape": BRATS_SHAPE, "contrasts": CONTRASTS, "size": args.size, "slices": args.slices,
                     "nifti": "float32 .nii.gz"},
    }
    try:
        print("phantom ...", flush=True)
        result["phantom"] = _in_child(phantom_speed, args.phantom_subjects, args.phantom_resolution, workdir)
        result["baseline_process"] = _in_child(_baseline)
        runs, written = [], 0
        for n in sizes:
            print(f"{n} subjects: writing volumes ...", flush=True)
            write_brats_like(workdir / "raw", written, n)
            written = n
            out = workdir / "prepared"
            print(f"{n} subjects: prepare ...", flush=True)
            prepare = _in_child(_prepare, str(workdir / "raw"), str(out), args.size, args.slices)
            print(f"{n} subjects: iterate ...", flush=True)
            iterate = _in_child(_iterate, str(out), args.batch_size, args.workers)
            disk = _disk_bytes(out)
            runs.append({"subjects": n, "disk_mib": round(disk / MIB, 1), "prepare": prepare, "iterate": iterate})
            print(json.dumps(runs[-1]), flush=True)
        result["runs"] = runs
        small, large = runs[0], runs[-1]
        per_subject = (large["disk_mib"] - small["disk_mib"]) / max(1, large["subjects"] - small["subjects"])
        result["summary"] = {
            "disk_mib_per_subject": round(per_subject, 1),
            "brats_335_disk_gib": round(per_subject * BRATS_SUBJECTS / 1024, 1),
            "brats_335_float32_images_only_gib": round(
                BRATS_SUBJECTS * args.slices * args.size ** 2 * 4 * len(CONTRASTS) / 2 ** 30, 1),
            "prepare_rss_anon_growth_mib": round(large["prepare"]["rss_anon_peak_mib"]
                                                 - small["prepare"]["rss_anon_peak_mib"], 1),
            "iterate_rss_anon_growth_mib": round(large["iterate"]["rss_anon_peak_mib"]
                                                 - small["iterate"]["rss_anon_peak_mib"], 1),
            "iterate_rss_growth_mib": round(large["iterate"]["rss_peak_mib"] - small["iterate"]["rss_peak_mib"], 1),
            "disk_growth_mib": round(large["disk_mib"] - small["disk_mib"], 1),
            "note": "rss_anon: private memory of the process and its DataLoader workers, which must not grow; "
                    "rss (VmRSS, summed over the processes, so shared libraries count once per worker) also counts "
                    "the pages of the memory-mapped .npy files a process has touched (page cache the kernel can "
                    "drop); TaskDataset reopens its maps after every 256 MiB read so that this part stays bounded.",
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
