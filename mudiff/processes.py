"""Worker process pools whose workers end with the process that started them, and training a run in one.

A ``ProcessPoolExecutor``'s workers outlive a parent killed alone (``kill -9 <pid>``, a Jupyter kernel restart):
a worker busy with a job finishes it and one waiting for the next job waits forever. Here each worker watches
its parent and exits once it is gone, so nothing trains on unseen, holds a run's lock or lingers in the process
table; the work resumes from what was written atomically before.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _end_with_parent(parent: int) -> None:
    """Worker initializer: exit (status 1) within a second of the process ``parent`` being gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


def worker_pool(workers: int, start_method: str = "spawn") -> ProcessPoolExecutor:
    """``workers`` worker processes that end when this process is gone. ``spawn`` (fresh interpreters) is safe under
    Jupyter and CUDA; ``fork`` lets workers inherit what this process has loaded (where the platform has it)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method),
                               initializer=_end_with_parent, initargs=(os.getpid(),))


def train_in_worker(config: dict, folder: str, threads: int) -> dict:
    """Train (or resume, or read back) the run of ``config`` (:meth:`RunConfig.to_dict`) in ``folder`` on
    ``threads`` threads, in a worker process; returns its step and seconds. Its progress bars and warnings go to
    ``<folder>/train.log`` (many processes share the parent's log)."""
    import torch

    from mudiff.config import RunConfig
    from mudiff.train import train

    torch.set_num_threads(threads)
    start = time.perf_counter()
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "train.log", "a") as log, contextlib.redirect_stderr(log):
        trainer = train(RunConfig.from_dict(config), folder)
    return {"step": trainer.step, "seconds": time.perf_counter() - start}


__all__ = ["worker_pool", "train_in_worker"]
