"""Synthesis tasks named like ``t1ce_from_flair_t2_t1``: one target contrast from an ordered list of sources."""
from __future__ import annotations

import re

_CONTRAST = re.compile(r"^[a-z][a-z0-9]*$")


def parse_task(task: str) -> tuple[str, list[str]]:
    """``"t1ce_from_flair_t2_t1"`` -> ``("t1ce", ["flair", "t2", "t1"])``; clear ValueError otherwise."""
    target, sep, rest = task.partition("_from_")
    sources = rest.split("_") if rest else []
    if not sep or not sources or not all(_CONTRAST.match(c) for c in [target, *sources]):
        raise ValueError(
            f"task {task!r} must look like '<target>_from_<source>[_<source>...]' with lower-case contrast "
            "names, e.g. 't1ce_from_flair_t2_t1'")
    if target in sources:
        raise ValueError(f"task {task!r}: the target {target!r} cannot also be a source")
    if len(set(sources)) != len(sources):
        raise ValueError(f"task {task!r} names a source twice")
    return target, sources


def task_name(target: str, sources: list[str]) -> str:
    """Inverse of :func:`parse_task`."""
    name = f"{target}_from_{'_'.join(sources)}"
    parse_task(name)
    return name
