"""The phantom study's training cost on this machine (issue 13: "under 2.5 hours on this 2-core CPU"); writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/study_cost_benchmark.py --workdir /tmp/study_cost

Trains one epoch of every run kind of the `study` profile (configs/profiles/study.yaml) on the profile's own
phantom and slices, in the run's exact config and with the profile's threads per process, and times each call
(start-up, training steps, the epoch's validation and checkpoint). A job of the study costs that per epoch it trains
(an upper estimate: start-up is paid once, not per epoch); the jobs are then list-scheduled in the study's order on
its worker processes, as ``train_study``'s process pool runs them. Scoring the runs afterwards is not included.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
PLAN_PARAMETERS = {"STUDY_CONFIG": "config", "N_SUBJECTS": "n_subjects", "RESOLUTION": "resolution",
                   "SPLIT": "split", "SLICES": "slices", "SEEDS": "seeds", "NORMALIZATIONS": "normalizations",
                   "NORMALIZATION_RUNS": "normalization_runs", "NORMALIZATION_SEEDS": "normalization_seeds",
                   "WORKERS": "workers", "THREADS": "threads", "OVERRIDES": "overrides"}
"""Parameters of notebook 13 in the profile -> StudyPlan fields that set the training cost."""


def study_plan(profile: str, workdir: Path):
    """The profile's StudyPlan at the CPU size, with every path under ``workdir``."""
    from mudiff.experiments import phantom_study
    from mudiff.reproduce import load_profile, project_file

    section = load_profile(profile).notebooks["13_phantom_study"]
    fields = {PLAN_PARAMETERS[k]: v for k, v in section.items() if k in PLAN_PARAMETERS}
    fields["config"] = str(project_file(fields.get("config", "configs/study.yaml")))
    return phantom_study.StudyPlan(**fields, size=section.get("SIZE") or phantom_study.default_size("cpu"),
                                   device="cpu", data_dir=str(workdir / "phantom"),
                                   slices_root=str(workdir / "slices"), runs_root=str(workdir / "runs"))


def job_steps(cfg, steps_per_epoch: int) -> int:
    """Training steps of a run: its epochs, or its ``max_steps`` when that ends it earlier."""
    steps = cfg.train.epochs * steps_per_epoch
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else steps


def list_schedule(costs: list[float], workers: int) -> float:
    """Wall time of running jobs of the given costs in order, each on the first worker that is free."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="study")
    parser.add_argument("--workdir", default="runs/benchmark_study_cost")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "study_cost_cpu.json"))
    args = parser.parse_args(argv)

    from mudiff.experiments.phantom_study import PAPER_NORMALIZATION, prepare_study_data
    from mudiff.train import train

    workdir = Path(args.workdir).resolve()
    plan = study_plan(args.profile, workdir)
    torch.set_num_threads(plan.threads)
    prepare_study_data(plan)
    first = plan.run_config(PAPER_NORMALIZATION, plan.seeds[0], plan.jobs()[0].run)
    first.train.max_steps = 1
    train(first, workdir / "timing" / "warm-up")  # one-off costs (imports, first kernels) out of the timings
    seconds_per_step, steps_per_epoch, rows = {}, {}, []
    for name in dict.fromkeys(job.run for job in plan.jobs()):
        cfg = plan.run_config(PAPER_NORMALIZATION, plan.seeds[0], name)
        cfg.train.epochs = 1
        start = time.perf_counter()
        trainer = train(cfg, workdir / "timing" / name)
        seconds = time.perf_counter() - start
        seconds_per_step[name], steps_per_epoch[name] = seconds / trainer.step, trainer.steps_per_epoch
        rows.append({"run": name, "steps_timed": trainer.step, "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    costs = [seconds_per_step[job.run] * job_steps(job.cfg, steps_per_epoch[job.run]) for job in plan.jobs()]
    wall = list_schedule(costs, plan.workers)
    result = {
        "benchmark": "phantom study training cost (one epoch of every run kind, extrapolated)",
        "command": shlex.join(["python", "benchmarks/study_cost_benchmark.py", *(argv or sys.argv[1:])]),
        "plan": {"jobs": len(plan.jobs()), "steps_per_epoch": max(steps_per_epoch.values()), "workers": plan.workers,
                 "threads": plan.threads, "size": plan.size, "subjects": plan.n_subjects, "slices": plan.slices},
        "runs": rows,
        "training_hours_summed": round(sum(costs) / 3600, 2),
        "training_hours_wall": round(wall / 3600, 2),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "load_avg": os.getloadavg(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"training: {result['training_hours_wall']} h on {plan.workers} workers "
          f"({result['training_hours_summed']} h summed); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
