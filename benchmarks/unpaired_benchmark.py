"""Unpaired MR <-> CT on the head phantom (issue 10): quality against the baselines, memory over steps, and the
cost of one SynDiff-cycle iteration against one MU-Diff iteration. Writes JSON to benchmarks/results/.

1. A head phantom with CT (2 mm), prepared to 64x64 slices (SynthRAD layout -> prepare_synthrad).
2. The comparison runs of ``mudiff.experiments.unpaired.comparison_configs`` from ``configs/unpaired_quick.yaml``
   (SynDiff cycle, CycleGAN, the paired upper bound per direction), each ``--steps`` iterations in the shared Trainer,
   with the process's resident memory recorded at every log step.
3. Every run plus bulk density (MR -> CT) and histogram-matched CT (CT -> MR) on the test split: tables by
   subject and by slice, and the paired tests the issue's targets name.
4. Timing (``--timing``, on random batches of the quick shapes, alternating the two methods so that load from
   other processes hits both alike): seconds per training iteration of syndiff_cycle and of MU-Diff's quick config.

5. Evidence (``--evidence``, instead of 2-4): issue 10's targets, SynDiff's claim over CycleGAN and the paired
   upper bound's claims (``unpaired.CLAIMS``) over training seeds, on new heads that no run saw, with verdicts.

    python benchmarks/unpaired_benchmark.py --steps 250 --subjects 10
    python benchmarks/unpaired_benchmark.py --timing-only
    python benchmarks/unpaired_benchmark.py --evidence --steps 1000 --seeds 0 1 2 3 4 --external-subjects 12
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from concurrent.futures import as_completed
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from mudiff.config import RunConfig, load_config, replace
from mudiff.data.prepare import load_manifest
from mudiff.methods import build_method, no_wrap
from mudiff.models import count_parameters

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def head_slices(folder: Path, subjects: int, slices: int, phantom_seed: int,
                split: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Path:
    """``folder``/slices: ``subjects`` heads of ``phantom_seed`` (2 mm, made when missing in ``folder``/heads),
    prepared to 64x64 with ``slices`` per subject (prepared when missing; prepared otherwise: a ValueError)."""
    from mudiff import demo

    heads = demo.ensure_heads(folder / "heads", subjects, seed=phantom_seed, resolution=2.0)
    return demo.ensure_mrct_slices(heads, folder / "slices", 64, 64, slices, seed=phantom_seed, split=split)


def comparison(slices_dir: Path, steps: int, seed: int, shared_subjects: bool = False) -> dict[str, RunConfig]:
    """The runs of ``unpaired.comparison_configs`` (configs/unpaired_quick.yaml) at training seed ``seed``, each
    with the epochs that end its cosine schedule at ``steps``: the unpaired runs with disjoint subjects see half
    the training subjects per domain, so their epochs are shorter than the paired runs'."""
    from mudiff.data.synthrad import MRCTDataset
    from mudiff.experiments import unpaired

    cfg = load_config(ROOT / "configs" / "unpaired_quick.yaml",
                      [f"data.root={slices_dir}", f"train.max_steps={steps}", f"train.seed={seed}",
                       "train.val_slices=0"])
    runs = {}
    for name, run_cfg in unpaired.comparison_configs(cfg, shared_subjects).items():
        cycle = run_cfg.model.method in ("syndiff_cycle", "cyclegan")
        train_set = MRCTDataset(slices_dir, "train", unpaired=cycle, subjects=run_cfg.data.unpaired_subjects)
        per_epoch = math.ceil(len(train_set) / run_cfg.train.batch_size)
        runs[name] = replace(run_cfg, train={"epochs": math.ceil(steps / per_epoch)})
    return runs


def step_stats(run: Path) -> dict:
    """A run's last logged step, median seconds per step and training seconds over every call that trained it."""
    from mudiff.train import read_stats, training_seconds

    records = read_stats(run / "stats.jsonl")
    steps = [r for r in records if "sec_per_step" in r]
    return {"steps": steps[-1]["step"], "sec_per_step_median": float(np.median([r["sec_per_step"] for r in steps])),
            "training_seconds": round(training_seconds(records), 1)}


def quality(args) -> dict:
    from mudiff.data.synthrad import MRCTDataset
    from mudiff.experiments import unpaired
    from mudiff.train import train

    work = Path(args.workdir)
    t0 = time.perf_counter()
    slices_dir = head_slices(work, args.subjects, args.slices, args.seed)
    t_phantom = time.perf_counter() - t0
    configs = comparison(slices_dir, args.steps, args.seed)
    memory: dict[str, list] = {}
    times: dict[str, float] = {}
    runs = {}
    epochs = {}
    for name, run_cfg in configs.items():
        runs[name] = work / "runs" / name
        epochs[name] = run_cfg.train.epochs
        if args.runs and name not in args.runs:  # reuse the run as it is (its steps are in the JSON)
            times[name] = 0.0
            continue
        trace = memory.setdefault(name, [])
        t0 = time.perf_counter()
        train(run_cfg, runs[name], callbacks=[lambda r, trace=trace: trace.append((r["step"], rss_mb()))])
        times[name] = time.perf_counter() - t0
    test = unpaired.TestSlices.load(slices_dir, "test")
    preds, scores = unpaired.compare(runs, test, MRCTDataset(slices_dir, "train"), seed=args.seed)
    tables = {d: {by: unpaired.results_table(scores[d], d, by).reset_index().to_dict(orient="records")
                  for by in ("subject", "slice")} for d in scores}
    means = {d: {m: df.drop(columns=["subject", "z"]).mean().round(4).to_dict() for m, df in s.items()}
             for d, s in scores.items()}
    tests = {"mr_to_ct_mae_hu_syndiff_vs_bulk_density":
             {by: unpaired.paired_p(scores["mr_to_ct"], "syndiff_cycle", "bulk_density", "mae_hu", by)
              for by in ("subject", "slice")},
             "ct_to_mr_mae_syndiff_vs_histogram_matched_ct":
             {by: unpaired.paired_p(scores["ct_to_mr"], "syndiff_cycle", "histogram_matched_ct", "mae", by)
              for by in ("subject", "slice")}}
    stats = {}
    for name, run in runs.items():
        trace = memory.get(name, [])
        stats[name] = {**step_stats(run), "train_seconds": round(times[name], 1),
                       "rss_mb_first_log": trace[0][1] if trace else None,
                       "rss_mb_last_log": trace[-1][1] if trace else None, "rss_trace": trace}
    manifest = load_manifest(slices_dir)
    return {"phantom_seconds": round(t_phantom, 1), "subjects": args.subjects,
            "split_subjects": {k: manifest["split"][k] for k in ("train", "val", "test")},
            "test_slices": len(test), "steps": args.steps, "epochs": epochs,
            "config": configs["syndiff_cycle"].to_dict(),
            "mean_scores": means, "tables": tables, "tests": tests, "runs": stats,
            "note": "head phantom: a controlled benchmark, not evidence about patients; few test subjects"}


def evidence(args) -> dict:
    """``unpaired.CLAIMS`` over training seeds on new heads that no run saw: every comparison run (SynDiff cycle
    with disjoint and with shared subjects, CycleGAN, the paired upper bound per direction) trained ``--steps`` at
    each of ``--seeds`` on the quality runs' data (``--subjects`` heads of phantom seed ``--seed``), ``--workers``
    runs at a time, then scored with the untrained baselines on ``--external-subjects`` heads of phantom seed
    ``--external-seed``, all in the test split, with ``unpaired.translator_diagnostic`` of the config's SynDiff run.
    Run folders resume and finished ones are read back."""
    from mudiff.data.synthrad import MRCTDataset
    from mudiff.evaluation.stats import claims_table
    from mudiff.experiments import unpaired
    from mudiff.processes import train_in_worker, worker_pool

    if args.external_seed == args.seed:
        raise SystemExit(f"--external-seed {args.external_seed} is the training phantom's seed: its heads include "
                         "the training subjects")
    work = Path(args.workdir)
    slices_dir = head_slices(work, args.subjects, args.slices, args.seed)
    external = head_slices(work / f"external_seed{args.external_seed}", args.external_subjects, args.slices,
                           args.external_seed, split=(0.0, 0.0, 1.0))
    jobs = {(seed, name): (cfg, work / f"seed{seed}" / name) for seed in args.seeds
            for name, cfg in comparison(slices_dir, args.steps, seed, shared_subjects=True).items()}
    start = time.perf_counter()
    with worker_pool(args.workers) as pool:
        futures = {pool.submit(train_in_worker, cfg.to_dict(), str(folder), args.threads): key
                   for key, (cfg, folder) in jobs.items()}
        for future in as_completed(futures):  # a failed run raises here: no claim is scored without it
            seed, name = futures[future]
            result = future.result()
            print(f"seed {seed} {name}: step {result['step']}, {result['seconds']:.0f} s "
                  f"({(time.perf_counter() - start) / 60:.1f} min so far)", flush=True)
    scoring = time.perf_counter()
    test, train_set = unpaired.TestSlices.load(external, "test"), MRCTDataset(slices_dir, "train")
    frames = []
    for seed in args.seeds:
        runs = {name: folder for (s, name), (_, folder) in jobs.items() if s == seed}
        frames.append(unpaired.long_scores(unpaired.compare(runs, test, train_set, seed=seed)[1], seed))
        frames.append(unpaired.long_scores(unpaired.translator_diagnostic(runs["syndiff_cycle"], test, seed), seed))
    scores = pd.concat(frames, ignore_index=True)
    metrics = [c for c in scores if c not in ("subject", "z", "run", "output", "seed")]
    per_seed = (scores.groupby(["output", "run", "seed", "subject"])[metrics].mean()  # subjects weigh alike
                .groupby(["output", "run", "seed"]).mean().round(4).reset_index())
    manifest = load_manifest(slices_dir)
    return {"training_subjects": manifest["split"]["train"], "external_subjects": sorted(set(test.subject)),
            "external_slices": len(test), "steps": args.steps, "seeds": args.seeds,
            "config": jobs[(args.seeds[0], "syndiff_cycle")][0].to_dict(),
            "runs": {f"seed{seed}/{name}": step_stats(folder) for (seed, name), (_, folder) in jobs.items()},
            "score_minutes": round((time.perf_counter() - scoring) / 60, 1),
            "claims": claims_table(scores, unpaired.CLAIMS).to_dict("records"),
            "means_per_seed": per_seed.to_dict("records"),
            "note": "head phantom: a controlled benchmark, not evidence about patients; claims pool the seeds per "
                    "external subject (mudiff.evaluation.stats.claims_table); the runs named 'syndiff_cycle: ...' "
                    "are unpaired.translator_diagnostic's parts of the SynDiff run"}


def timing(args) -> dict:
    """Seconds per training iteration, syndiff_cycle vs MU-Diff (quick configs), on random batches."""
    device = torch.device("cpu")
    cyc_cfg = load_config(ROOT / "configs" / "unpaired_quick.yaml", [f"train.batch_size={args.batch_size}"])
    mu_cfg = load_config(ROOT / "configs" / "quick.yaml", [f"train.batch_size={args.batch_size}"])
    methods = {}
    cyclegan_cfg = replace(cyc_cfg, model={"method": "cyclegan"})
    for name, cfg in (("syndiff_cycle", cyc_cfg), ("mudiff", mu_cfg), ("cyclegan", cyclegan_cfg)):
        method = build_method(cfg)
        fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        method.setup(device, None, fmt, no_wrap).train()
        s, b = cfg.model.image_size, args.batch_size
        if name == "mudiff":
            x0, src = torch.rand(b, 1, s, s) * 2 - 1, torch.rand(b, cfg.model.num_sources, s, s) * 2 - 1
            step = lambda i, m=method, x0=x0, src=src: m.train_step(x0, src, i)  # noqa: E731
        else:
            x = {"mr": torch.rand(b, 1, s, s) * 2 - 1, "ct": torch.rand(b, 1, s, s) * 2 - 1}
            step = lambda i, m=method, x=x: m.train_step_unpaired(x, i)  # noqa: E731
        for i in range(2):  # warm-up
            step(i + 1)
        params = {"generator": count_parameters(method.generator),
                  "critics": count_parameters(method) - count_parameters(method.generator)}
        methods[name] = {"step": step, "seconds": [], "params": params}
    for _ in range(args.rounds):  # alternate, so that load from other processes hits every method alike
        for name, m in methods.items():
            t0 = time.perf_counter()
            for i in range(args.iterations):
                m["step"](i + 3)  # never a multiple of lazy_reg: R1 steps are timed in proportion below
            m["seconds"].append((time.perf_counter() - t0) / args.iterations)
    out = {name: {"sec_per_iteration_median": float(np.median(m["seconds"])), "per_round": m["seconds"],
                  "parameters": m["params"]} for name, m in methods.items()}
    out["syndiff_cycle_over_mudiff"] = out["syndiff_cycle"]["sec_per_iteration_median"] / \
        out["mudiff"]["sec_per_iteration_median"]
    out.update(batch_size=args.batch_size, image_size=64, torch_threads=torch.get_num_threads(),
               note="iterations without the lazy R1 step (9 of 10 steps); random batches; other processes shared "
                    "the 2 cores (alternating rounds, medians)")
    return out


def command(args) -> str:
    """The command line of ``args`` with every value (defaults included); evidence options only with --evidence."""
    parts = []
    for key, value in vars(args).items():
        if value is None or value is False or (key in EVIDENCE_OPTIONS and not args.evidence):
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else " ".join([flag, *map(str, value if isinstance(value, list)
                                                                      else [value])]))
    return "python benchmarks/unpaired_benchmark.py " + " ".join(parts)


EVIDENCE_OPTIONS = ("seeds", "external_subjects", "external_seed", "workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="the phantom's seed (and the training seed of quality)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/mudiff_unpaired_benchmark")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="train (or continue to --steps) only these runs; the others are reused from --workdir")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--evidence", action="store_true",
                        help="instead of quality and timing: unpaired.CLAIMS over training seeds on new heads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evidence: training seeds")
    parser.add_argument("--external-subjects", type=int, default=12, help="evidence: new heads to test on")
    parser.add_argument("--external-seed", type=int, default=1, help="evidence: their phantom seed")
    parser.add_argument("--workers", type=int, default=2, help="evidence: runs trained at a time")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/unpaired_cpu.json "
                                                    "(unpaired_evidence_cpu.json with --evidence)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
              "torch": torch.__version__, "cpu_count": psutil.cpu_count(), "load_avg_start": list(psutil.getloadavg()),
              "command": command(args)}
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               ("unpaired_evidence_cpu.json" if args.evidence else "unpaired_cpu.json"))
    if args.evidence:
        result["evidence"] = evidence(args)
    elif args.timing_only:
        out = out.with_name(out.stem + "_timing.json")
    else:
        result["quality"] = quality(args)
    if not (args.no_timing or args.evidence):
        result["timing"] = timing(args)
    result["load_avg_end"] = list(psutil.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("quality", "evidence")}, indent=1, default=float))
    if "quality" in result:
        print(json.dumps(result["quality"]["mean_scores"], indent=1))
        print(json.dumps(result["quality"]["tests"], indent=1, default=float))
    if "evidence" in result:
        print(pd.DataFrame(result["evidence"]["claims"]).to_string())
    print("wrote", out)


if __name__ == "__main__":
    main()
