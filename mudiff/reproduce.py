"""Run the ordered notebooks headlessly with papermill, one parameter profile for all of them.

``reproduce("quick")`` executes ``notebooks/NN_*.ipynb`` in order (any two-digit prefix: later notebooks join
by being there) with kernel ``python3`` in an explicit working directory, writes the executed copies into
``<workdir>/papermill_runs/<YYYYmmdd-HHMMSS>-<profile>/`` (the source notebooks are never written), stops at
the first failure with an error naming the failing executed notebook, and prints a summary table.

A profile is ``configs/profiles/<name>.yaml`` (or any YAML path)::

    common:            # given to every notebook that declares the parameter in its `parameters` cell
      SEED: 0
      RUN_DIR: runs/quick
    01_training:       # a notebook's stem: parameters of that notebook only (unknown names are an error)
      CONFIG: configs/quick.yaml
    env:               # optional: environment variables of the kernels, e.g. OMP_NUM_THREADS: 1
      OMP_NUM_THREADS: 1
    notebooks: [13_phantom_study]   # optional: the notebooks this profile runs (default: all)
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from mudiff.display.explore import HEADLESS_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PROFILE_DIR = PROJECT_ROOT / "configs" / "profiles"
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
"""The kernels' own log shows errors only: its start-up warning that a local kernel talks to papermill over TCP
without encryption (every notebook, every run) would bury the progress and results a log reader looks for."""
NOTEBOOK_NAME = re.compile(r"^(\d{2})_[A-Za-z0-9_\-]+\.ipynb$")


class NotebookFailed(RuntimeError):
    """A notebook raised (or its kernel died); ``executed`` is the executed copy holding the error."""

    def __init__(self, message: str, executed: Path):
        super().__init__(message)
        self.executed = executed


@dataclass
class Profile:
    name: str
    common: dict[str, Any]
    notebooks: dict[str, dict[str, Any]]
    env: dict[str, str]
    only: list[str] | None = None  # the notebooks the profile runs (None: all)


def project_file(path: str | Path) -> Path:
    """``path`` as given when it exists (relative to the working directory), else relative to the project root
    (so notebooks running in another working directory still find ``configs/quick.yaml``)."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (PROJECT_ROOT / path).exists():
        return path
    return PROJECT_ROOT / path


def load_profile(profile: str | Path) -> Profile:
    """Read ``configs/profiles/<profile>.yaml`` (or a YAML file path) and check its shape."""
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"profile {profile!r} not found ({path}); known profiles: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"profile {path} must be a mapping with `common:` and per-notebook sections")
    sections = {}
    for key, value in raw.items():
        if key == "notebooks":
            continue
        if value is None:
            value = {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"profile {path}: section {key!r} must map parameter names to values")
        sections[str(key)] = value
    only = raw.get("notebooks")
    if only is not None and (not isinstance(only, list) or not only):
        raise ValueError(f"profile {path}: `notebooks` must be a non-empty list of notebook stems, got {only!r}")
    common = sections.pop("common", {})
    env = {k: str(v) for k, v in sections.pop("env", {}).items()}
    bad = [k for k in sections if not re.match(r"^\d{2}_", k)]
    if bad:
        raise ValueError(f"profile {path}: sections must be `common`, `env` or a notebook stem like `01_training`, "
                         f"got {bad}")
    return Profile(path.stem, common, sections, env, only)


def discover(notebook_dir: str | Path | None = None) -> list[Path]:
    """The notebooks ``NN_*.ipynb`` of a folder, in order of their prefix (then name)."""
    folder = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"notebook folder {folder} does not exist; pass notebook_dir")
    found = sorted((p for p in folder.iterdir() if NOTEBOOK_NAME.match(p.name)), key=lambda p: p.name)
    if not found:
        raise FileNotFoundError(f"no notebook named NN_*.ipynb in {folder}")
    return found


def parameters_cell(notebook: str | Path) -> tuple[int, str]:
    """Position and source of the notebook's one code cell tagged ``parameters`` (ValueError otherwise)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [(i, c.source) for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one code cell tagged `parameters`, found {len(cells)}")
    return cells[0]


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """The literal defaults of a notebook's ``parameters`` cell, in order (ValueError on anything else)."""
    import ast

    _, source = parameters_cell(notebook)
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{notebook}: the parameters cell may only assign literals to names, line {node.lineno}")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{notebook}: parameter {node.targets[0].id} (line {node.lineno}) is not a literal; "
                             "derived values belong in the next cell") from None
    return values


def _select(found: list[Path], wanted: Sequence[str] | None) -> list[Path]:
    if not wanted:
        return found
    chosen = []
    for name in wanted:
        key = Path(str(name)).name.removesuffix(".ipynb")
        hits = [p for p in found if p.stem == key or p.name[:2] == key]
        if len(hits) != 1:
            raise ValueError(f"notebook {name!r} matches {len(hits)} of {[p.stem for p in found]}; give its stem "
                             "(e.g. 01_training) or its two-digit prefix")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return sorted(chosen, key=lambda p: p.name)  # always in order: later notebooks read earlier results


def _parameters(notebooks: list[Path], found: list[Path], profile: Profile, extra: dict[str, Any]
                ) -> dict[Path, dict[str, Any]]:
    """The parameters each notebook gets; checks every section against the notebook's declared parameters."""
    stray = sorted(set(profile.notebooks) - {p.stem for p in found})
    if stray:
        raise ValueError(f"profile {profile.name!r} has section(s) {stray} for notebooks that do not exist in "
                         f"{found[0].parent}")
    params, used = {}, set()
    for nb in notebooks:
        declared = set(notebook_parameters(nb))
        section = profile.notebooks.get(nb.stem, {})
        unknown = sorted(set(section) - declared)
        if unknown:
            raise ValueError(f"profile {profile.name!r}, section {nb.stem!r}: {unknown} are not parameters of "
                             f"{nb.name} (it declares {sorted(declared)})")
        chosen = {k: v for k, v in profile.common.items() if k in declared}
        chosen.update(section)
        chosen.update({k: v for k, v in extra.items() if k in declared})
        used |= set(chosen)
        params[nb] = chosen
    unused = sorted((set(profile.common) | set(extra)) - used)
    if unused:
        print(f"note: parameter(s) {unused} are declared by none of the notebooks run", file=sys.stderr)
    return params


def _figures(folder: Path) -> dict[Path, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*.png")}


def _run_folder(out_root: Path, profile: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, k = out_root / f"{stamp}-{profile}", 1
    while folder.exists():  # two runs within one second
        k += 1
        folder = out_root / f"{stamp}-{profile}-{k}"
    folder.mkdir(parents=True)
    return folder


@contextlib.contextmanager
def _headless_environment(env: dict[str, str]) -> Iterator[None]:
    """Kernels inherit this process's environment: mark them headless, let them use the inline backend, and add
    the profile's ``env``."""
    saved = {k: os.environ.get(k) for k in (HEADLESS_ENV, "MPLBACKEND", *env)}
    os.environ.update(env)
    os.environ[HEADLESS_ENV] = "1"
    os.environ.pop("MPLBACKEND", None)  # a non-inline backend would keep figures out of the executed notebooks
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _papermill_log(enabled: bool) -> Iterator[None]:
    """Show papermill's INFO lines (cell headers and the cells' output) on stderr for the run's duration."""
    logger = logging.getLogger("papermill")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    level = logger.level
    if enabled and not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler in logger.handlers:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _summary(rows: list[dict[str, Any]], folder: Path) -> str:
    import pandas as pd

    table = pd.DataFrame(rows, columns=["notebook", "status", "seconds", "figures"])
    table.to_csv(folder / "summary.csv", index=False)
    total = pd.DataFrame([{"notebook": "total", "status": "", "seconds": table["seconds"].sum(),
                           "figures": table["figures"].sum()}])
    shown = pd.concat([table, total], ignore_index=True)
    shown["seconds"] = shown["seconds"].map(lambda s: f"{s:.1f}")
    return shown.to_string(index=False) + f"\nexecuted notebooks: {folder}"


def reproduce(profile: str, workdir: str | Path = ".", notebooks: Sequence[str] | None = None,
              out_root: str | Path = "papermill_runs", notebook_dir: str | Path | None = None,
              parameters: dict[str, Any] | None = None, kernel_name: str = "python3", log_output: bool = True,
              ) -> Path:
    """Execute the notebooks in order with ``profile``'s parameters; returns the folder of the executed copies.

    workdir: the working directory of every notebook (data/, runs/, figures/ are relative to it); out_root:
    relative to ``workdir`` unless absolute; notebooks: stems or two-digit prefixes to run (default: the
    profile's ``notebooks``, else all; always in order); notebook_dir: where the source notebooks are (default: the project's ``notebooks/``);
    parameters: values that override the profile for every notebook that declares them. Raises
    :class:`NotebookFailed` at the first failing notebook (the later ones are not run).
    """
    import papermill as pm

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prof = load_profile(profile)
    found = discover(notebook_dir)
    selected = _select(found, notebooks or prof.only)
    params = _parameters(selected, found, prof, dict(parameters or {}))
    out_root = Path(out_root)
    folder = _run_folder(out_root if out_root.is_absolute() else workdir / out_root, prof.name)

    rows: list[dict[str, Any]] = []
    with _headless_environment(prof.env), _papermill_log(log_output):
        for nb in selected:
            executed = folder / nb.name
            figures_dir = workdir / str(params[nb].get("FIGURES", "figures"))
            before = _figures(figures_dir)
            print(f"== {nb.name} ({prof.name}) -> {executed}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            failure = None
            try:
                pm.execute_notebook(str(nb), str(executed), parameters=params[nb], kernel_name=kernel_name,
                                    cwd=str(workdir), progress_bar=False, log_output=log_output,
                                    stdout_file=None, stderr_file=None, extra_arguments=KERNEL_ARGUMENTS)
            except Exception as err:  # PapermillExecutionError, a dead kernel, a timeout, ...
                failure = err
            after = _figures(figures_dir)
            changed = sum(1 for p, stamp in after.items() if before.get(p) != stamp)
            rows.append({"notebook": nb.stem, "status": "failed" if failure else "ok",
                         "seconds": time.perf_counter() - start, "figures": changed})
            if failure is not None:
                print(_summary(rows, folder), flush=True)
                reason = (f"{failure.ename}: {failure.evalue}" if isinstance(failure, pm.PapermillExecutionError)
                          else f"{type(failure).__name__}: {failure}")
                raise NotebookFailed(f"notebook {nb.name} failed ({reason}); see the executed notebook {executed}",
                                     executed) from failure
    print(_summary(rows, folder), flush=True)
    return folder


__all__ = ["reproduce", "load_profile", "discover", "project_file", "parameters_cell", "notebook_parameters",
           "NotebookFailed", "Profile", "PROJECT_ROOT"]
