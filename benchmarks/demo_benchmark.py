"""`make demo`'s wall time (every notebook in the quick profile, budget 20 minutes on the 2-core CPU); writes JSON.

    python benchmarks/demo_benchmark.py --workdir /tmp/demo

Runs ``python -m mudiff demo``'s :func:`mudiff.demo.run_demo` in a fresh ``--workdir`` (phantom, slices, runs and
figures made there, as on a fresh machine) and records each notebook's seconds, the total and the machine's load
(the time is only meaningful on an otherwise idle machine: the load average says whether it was).
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

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 20 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/benchmark_demo", help="an empty folder (a used one reuses runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_cpu.json"))
    args = parser.parse_args(argv)

    from mudiff.demo import run_demo

    workdir = Path(args.workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty: a used folder reuses its data and runs, which is not a fresh demo")
    load_before = os.getloadavg()
    start = time.perf_counter()
    folder = run_demo(workdir)
    seconds = time.perf_counter() - start
    notebooks = pd.read_csv(folder / "summary.csv")
    result = {
        "benchmark": "make demo: every notebook, quick profile, fresh working directory",
        "command": shlex.join(["python", "benchmarks/demo_benchmark.py", *(argv or sys.argv[1:])]),
        "seconds": round(seconds, 1), "budget_seconds": BUDGET_S, "within_budget": seconds < BUDGET_S,
        "notebooks": [{"notebook": r.notebook, "seconds": round(r.seconds, 1)} for r in notebooks.itertuples()],
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"make demo: {seconds / 60:.1f} min (budget {BUDGET_S // 60}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
