"""Zero-shot translation over training seeds (issue 12's target and MIDiffusion's claim over SDEdit), on new
phantom subjects that no run saw; writes JSON to benchmarks/results/.

1. The training phantom (``--subjects`` subjects of phantom seed ``--seed`` with a PD contrast, ``--size`` slices,
   as notebook 12's) and ``--external-subjects`` new subjects of phantom seed ``--external-seed``, all in the test
   split.
2. The judges: one segmenter per target contrast trained on that contrast of the training split only, one set per
   seed of ``--judge-seeds``, the same for every training seed (the claims are about the translations). With
   several, the claims read each slice's Dice averaged over the judges (``zero_shot.pool_judges``), and the JSON
   also holds the claims under each judge alone: how much a verdict owes to the judge. New judges score the
   translations kept in each seed's folder, and each judge set's scores are kept there too.
3. Per training seed, in ``--workers`` worker processes (``zero_shot.seed_evidence``): MIDiffusion and SDEdit per
   target, ``--steps`` iterations of ``configs/midiffusion_quick.yaml`` at batch 4 with the cosine schedule ending
   there; every pair of ``zero_shot.PAIRS`` translated (sampling seed = training seed) and scored with the untrained
   baselines. Run folders and per-seed scores resume.
4. ``zero_shot.evidence_claims`` over the seeds (``mudiff.evaluation.stats.claims_table``: a subject's slices
   averaged, seeds pooled per subject) with verdicts, and the per-seed means.
5. With ``--lmi-mode`` other than the config's (``faithful``): every run of that mode in ``--workdir``/lmi_<mode>
   on the same data and judges, and, where the config's runs of the same seeds have kept translations in
   ``--workdir``, the claim that MIDiffusion with that LMI beats MIDiffusion with the config's, per pair.

    OMP_NUM_THREADS=1 python benchmarks/zero_shot_evidence.py --steps 1000 --seeds 0 1 2 3 --external-subjects 8
    OMP_NUM_THREADS=1 python benchmarks/zero_shot_evidence.py --steps 1000 --seeds 0 1 2 3 --external-subjects 8 \
        --lmi-mode corrected
    OMP_NUM_THREADS=1 python benchmarks/zero_shot_evidence.py --steps 1000 --seeds 0 1 2 3 --external-subjects 8 \
        --judge-seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from concurrent.futures import as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psutil
import torch

from mudiff.config import LMI_MODES, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "midiffusion_quick.yaml"
CONFIG_MODE = load_config(CONFIG).model.lmi_mode
BATCH_SIZE = 4  # notebook 12's quick profile


def phantom_slices(folder: Path, subjects: int, slices: int, size: int, phantom_seed: int,
                   split: tuple[float, float, float]) -> Path:
    """``folder``/slices: ``subjects`` phantom subjects of ``phantom_seed`` with a PD contrast (in ``folder``/subjects,
    :func:`~mudiff.demo.ensure_phantom`), prepared to ``size`` x ``size`` with ``slices`` per subject."""
    from mudiff.demo import ensure_phantom, ensure_slices

    ensure_phantom(folder / "subjects", subjects, seed=phantom_seed, extra_contrasts=("pd",))
    return ensure_slices(folder / "subjects", folder / "slices", size=size, slices=slices, seed=phantom_seed,
                         split=split)


def evidence(args) -> dict:
    from mudiff.evaluation.segmentation import load_split, train_segmenter
    from mudiff.evaluation.stats import claims_table
    from mudiff.experiments import zero_shot as zs
    from mudiff.processes import worker_pool
    from mudiff.train import read_stats, training_seconds

    if args.external_seed == args.seed:
        raise SystemExit(f"--external-seed {args.external_seed} is the training phantom's seed: its subjects include "
                         "the training subjects")
    work = Path(args.workdir)
    slices_dir = phantom_slices(work, args.subjects, args.slices, args.size, args.seed, (0.6, 0.2, 0.2))
    external = phantom_slices(work / f"external_seed{args.external_seed}", args.external_subjects, args.slices,
                              args.size, args.external_seed, (0.0, 0.0, 1.0))
    train_data = load_split(slices_dir, "train")
    targets = list(dict.fromkeys(t for _, t in zs.PAIRS))
    start = time.perf_counter()
    judges = {j: {t: train_segmenter(zs.target_only(train_data, t), (16, 32, 64), args.seg_steps, 16, seed=j,
                                     progress=False, classes=zs.judge_classes(train_data)) for t in targets}
              for j in args.judge_seeds}
    references = {t: zs.reference_intensities(train_data, t) for t in targets}
    judge_minutes = (time.perf_counter() - start) / 60
    epochs = math.ceil(args.steps / math.ceil(len(train_data) / BATCH_SIZE))  # the cosine schedule ends at --steps
    runs_root = work if args.lmi_mode == CONFIG_MODE else work / f"lmi_{args.lmi_mode}"
    seed_job = (CONFIG, slices_dir, external)
    frames = []
    with worker_pool(args.workers) as pool:
        futures = {pool.submit(zs.seed_evidence, *seed_job, runs_root / f"seed{seed}", zs.PAIRS, seed,
                               run_overrides(args, epochs, args.lmi_mode), judges, references, args.threads): seed
                   for seed in args.seeds}
        for future in as_completed(futures):  # a failed seed raises here: no claim is scored without it
            frames.append(future.result())
            print(f"seed {futures[future]} scored ({(time.perf_counter() - start) / 60:.1f} min so far)", flush=True)
    scores = pd.concat(frames, ignore_index=True)
    pooled = zs.pool_judges(scores)
    metrics = [*zs.CLAIM_METRICS, "ssim_B", "mae_B"]
    per_seed = (pooled.groupby(["output", "run", "seed", "subject"])[metrics].mean()  # subjects weigh alike
                .groupby(["output", "run", "seed"]).mean().round(4).reset_index())
    by_judge = {} if len(judges) == 1 else {"claims_by_judge": {
        j: claims_table(zs.pool_judges(scores[scores["judge"] == j]), zs.evidence_claims()).to_dict("records")
        for j in judges}}
    runs = {}
    for run in (f"seed{seed}/{method}_{t}" for seed in args.seeds for method in zs.MODEL_METHODS.values()
                for t in targets):
        records = read_stats(runs_root / run / "stats.jsonl")
        runs[run] = {"steps": records[-1]["step"], "training_seconds": round(training_seconds(records), 1)}
    external_data = load_split(external, "test")
    versus = {} if runs_root == work else {"versus_config_mode": versus_config_mode(
        args, pooled, work, lambda seed: zs.seed_evidence(*seed_job, work / f"seed{seed}", zs.PAIRS, seed,
                                                          run_overrides(args, epochs, CONFIG_MODE), judges,
                                                          references, args.threads))}
    return {"lmi_mode": args.lmi_mode, "runs_root": str(runs_root),
            "training_subjects": sorted(set(train_data.subjects)),
            "external_subjects": sorted(set(external_data.subjects)), "external_slices": len(external_data),
            "steps": args.steps, "epochs": epochs, "seeds": args.seeds,
            "overrides": run_overrides(args, epochs, args.lmi_mode), "judge_seeds": args.judge_seeds,
            "judges": {j: {t: {"classes": s.class_names, "final_loss": s.losses[-1]} for t, s in judge_set.items()}
                       for j, judge_set in judges.items()},
            "minutes": {"judges": round(judge_minutes, 1), "total": round((time.perf_counter() - start) / 60, 1)},
            "runs": runs, "claims": claims_table(pooled, zs.evidence_claims()).to_dict("records"), **by_judge, **versus,
            "means_per_seed": per_seed.to_dict("records"),
            "note": "brain phantom: a controlled benchmark, not evidence about patients; claims pool the seeds per "
                    "external subject (mudiff.evaluation.stats.claims_table); the judges are trained once per judge "
                    "seed, on the target contrast of the training subjects; with several judge seeds, each slice's "
                    "Dice is averaged over the judges (zero_shot.pool_judges)"}


def run_overrides(args, epochs: int, lmi_mode: str) -> list[str]:
    """The evidence runs' config overrides (``train.seed`` is added per seed): ``--steps`` iterations, the cosine
    schedule ending there, MIDiffusion with ``lmi_mode``."""
    return [f"model.image_size={args.size}", f"train.batch_size={BATCH_SIZE}", f"train.epochs={epochs}",
            f"train.max_steps={args.steps}", "train.device=cpu", f"model.lmi_mode={lmi_mode}"]


def versus_config_mode(args, scores: pd.DataFrame, work: Path, config_mode_scores) -> dict:
    """MIDiffusion with ``--lmi-mode`` (``scores``, judges pooled) against MIDiffusion with the config's mode, for
    the seeds whose config-mode runs have kept translations in ``work``, scored by the same judges
    (``config_mode_scores(seed)``: read back, or the kept translations scored): claims per pair; {} when none."""
    from mudiff.evaluation.stats import claims_table
    from mudiff.experiments import zero_shot as zs

    this, theirs = f"MIDiffusion ({args.lmi_mode} LMI)", f"MIDiffusion ({CONFIG_MODE} LMI)"
    seeds = [seed for seed in args.seeds if (work / f"seed{seed}" / "translations.json").is_file()]
    if not seeds:
        return {}
    frames = [scores[scores["run"] == zs.MIDIFFUSION].assign(run=this)]
    for seed in seeds:
        theirs_scores = zs.pool_judges(config_mode_scores(seed))
        frames.append(theirs_scores[theirs_scores["run"] == zs.MIDIFFUSION].assign(run=theirs))
    claims = claims_table(pd.concat(frames, ignore_index=True), zs.evidence_claims(a=this, others=(theirs,)))
    return {"seeds": seeds, "claims": claims.to_dict("records")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=10, help="training phantom subjects (60/20/20 split)")
    parser.add_argument("--slices", type=int, default=12, help="slices per subject")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the training phantom's seed")
    parser.add_argument("--steps", type=int, default=1000, help="training iterations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--external-subjects", type=int, default=8, help="new subjects to test on")
    parser.add_argument("--external-seed", type=int, default=1, help="their phantom seed")
    parser.add_argument("--seg-steps", type=int, default=300, help="training steps of each judge")
    parser.add_argument("--judge-seeds", type=int, nargs="+", default=[0],
                        help="the judges' training seeds: one set of judges per seed, Dice averaged over them")
    parser.add_argument("--workers", type=int, default=2, help="training seeds run at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--lmi-mode", choices=LMI_MODES, default=CONFIG_MODE,
                        help="the MIDiffusion runs' LMI (runs of a mode other than the config's in WORKDIR/lmi_MODE)")
    parser.add_argument("--workdir", default="/tmp/mudiff_zero_shot_evidence")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/zero_shot_evidence_cpu.json "
                                                    "(_lmi_<mode> before _cpu for another mode, _judge<seed> for "
                                                    "another judge seed, _judges<s1>-<s2>.. for several)")
    args = parser.parse_args()
    judges = "-".join(map(str, args.judge_seeds))
    suffix = ("" if args.lmi_mode == CONFIG_MODE else f"_lmi_{args.lmi_mode}") + \
        ("" if args.judge_seeds == [0] else f"_judge{judges}" if len(args.judge_seeds) == 1 else f"_judges{judges}")
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"zero_shot_evidence{suffix}_cpu.json")
    torch.set_num_threads(args.threads)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
              "torch": torch.__version__, "cpu_count": psutil.cpu_count(), "load_avg_start": list(psutil.getloadavg()),
              "command": shlex.join(["python", "benchmarks/zero_shot_evidence.py", *sys.argv[1:]]),
              "arguments": vars(args), "evidence": evidence(args), "load_avg_end": list(psutil.getloadavg())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(pd.DataFrame(result["evidence"]["claims"]).to_string())
    print("wrote", out)


if __name__ == "__main__":
    main()
