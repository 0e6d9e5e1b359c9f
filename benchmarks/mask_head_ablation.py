"""The mask-head ablation (spec section 3): the learned head is MU-Diff's default once an ablation shows it no worse
than the published code's fixed one (a random projection, never trained). Trains MU-Diff with each head at the phantom
study's scale (its config, phantom, split, slice size and training seeds, the paper's normalisation; runs resume and
are shared with ``python -m mudiff reproduce --profile study``), scores the held-out test subjects and tests the claim
over seeds as the study does; writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/mask_head_ablation.py --out benchmarks/results/mask_head_ablation_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mudiff.experiments import phantom_study as ps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="training processes at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/mask_head_ablation_cpu.json")
    args = parser.parse_args(argv)
    plan = ps.StudyPlan(runs=["mudiff", "fixed_mask_head"], seeds=args.seeds, normalizations=[ps.PAPER_NORMALIZATION],
                        normalization_runs=[], size=ps.default_size(args.device), device=args.device,
                        workers=args.workers)
    start = time.perf_counter()
    ps.train_study(plan)
    trained = time.perf_counter() - start
    scores = ps.score_study(plan)
    claims = [c for c in ps.CLAIMS if c.a[0] == "fixed_mask_head"]
    report = {
        "benchmark": "mask-head ablation at the phantom study's scale (spec section 3)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "scale": ps._scale(plan, scores),
        "claims": ps.claims_table(scores, claims).to_dict("records"),
        "seed_spread": ps.seed_spread(scores).to_dict("records"),
        "convergence": ps.convergence_table(plan).to_dict("records"),
        "training_seconds_this_call": trained, "seconds": time.perf_counter() - start,
        "machine": {"device": args.device, "cpu": platform.machine(), "torch": torch.__version__,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report["claims"], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
