"""Worker process pools whose workers end with the process that started them.

A ``ProcessPoolExecutor``'s workers outlive a parent killed alone (``kill -9 <pid>``, a Jupyter kernel restart):
a worker busy with a job finishes it and one waiting for the next job waits forever. Here each worker watches
its parent and exits once it is gone, so nothing trains on unseen, holds a run's lock or lingers in the process
table; the work resumes from what was written atomically before.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor


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


__all__ = ["worker_pool"]
