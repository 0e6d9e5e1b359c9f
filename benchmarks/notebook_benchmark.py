"""Run one notebook headless in a profile (with parameter overrides) and copy the CSV tables it writes into a JSON
file with the time it took and the machine: the quality numbers of a notebook as a committed, reproducible record.

    python benchmarks/notebook_benchmark.py 12 --workdir /tmp/zero_shot --set TRAIN_STEPS=1500 \\
        --tables 12_translation_scores.csv 12_dice.csv 12_dice_paired_tests.csv 12_respaced_steps.csv \\
        --out benchmarks/results/zero_shot_quality_cpu.json

``--set NAME=VALUE`` values are read as YAML (numbers, lists, booleans) and override the profile's parameters.
Set ``OMP_NUM_THREADS`` for the kernel's thread count (a busy shared CPU slows multi-threaded kernels down).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(notebook: str, profile: str, workdir: Path, parameters: dict, tables: list[str]) -> dict:
    """Execute ``notebook`` in ``workdir`` and return the run's record with every table of ``tables`` (file
    names in the notebook's FIGURES folder) as a list of rows."""
    import pandas as pd

    from mudiff.reproduce import reproduce

    start = time.perf_counter()
    reproduce(profile, workdir, notebooks=[notebook], parameters=parameters)
    seconds = time.perf_counter() - start
    figures = workdir / str(parameters.get("FIGURES", "figures"))
    return {"notebook": notebook, "profile": profile, "parameters": parameters, "seconds": round(seconds, 1),
            "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_end": os.getloadavg(),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "tables": {name: pd.read_csv(figures / name).to_dict(orient="records") for name in tables}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="stem or two-digit prefix")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--workdir", required=True, help="the notebook's working directory (data, runs, figures)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tables", nargs="+", required=True, help="CSV files the notebook writes to FIGURES")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    parameters = {}
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        parameters[name] = yaml.safe_load(value)
    record = run_notebook(args.notebook, args.profile, Path(args.workdir).resolve(), parameters, args.tables)
    record["command"] = "python benchmarks/notebook_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
