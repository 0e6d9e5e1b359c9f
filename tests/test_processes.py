"""Worker pools whose workers end with their parent: a parent killed alone (``kill -9 <pid>``) leaves no worker
training on or waiting forever, for the study's spawned workers and the phantom generator's forked ones."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")


def _running(pid: int) -> bool:
    """Whether the process exists and has not ended (a zombie has ended: nothing may reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    return children


def _kill_alone_and_find_orphans(process: subprocess.Popen, children: list[int]) -> list[int]:
    """Kill the parent alone, wait up to 30 s for its children to end; the ones still running (then killed)."""
    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [c for c in children if _running(c)]
    for child in orphans:
        os.kill(child, signal.SIGKILL)
    return orphans


@pytest.mark.parametrize("start_method", sorted({"spawn", "fork"} & set(multiprocessing.get_all_start_methods())))
def test_pool_workers_end_when_their_parent_is_killed_alone(start_method):
    parent = ("import os, time\n"
              "from mudiff.processes import worker_pool\n"
              f"with worker_pool(2, {start_method!r}) as pool:\n"
              "    print(pool.submit(os.getpid).result(), flush=True)\n"
              "    pool.submit(time.sleep, 300)  # a run training (fork starts the second worker too, idle)\n"
              "    time.sleep(300)\n")
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    worker = int(process.stdout.readline())
    children = _children(process.pid)  # the workers (and spawn's resource tracker)
    assert worker in children
    assert not _kill_alone_and_find_orphans(process, children), "a worker lived on after its parent was killed"


def test_phantom_generator_workers_end_when_it_is_killed_alone(tmp_path):
    out = tmp_path / "phantom"
    script = ("from mudiff.data.phantom import generate_dataset\n"
              f"generate_dataset({str(out)!r}, 40, resolution=2.0, workers=2)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(out.glob("*/*.nii.gz")) and time.monotonic() < deadline:  # the workers are at work
        time.sleep(0.2)
    children = _children(process.pid)
    assert len(children) == 2
    assert not _kill_alone_and_find_orphans(process, children), "a phantom worker lived on after its parent was killed"
