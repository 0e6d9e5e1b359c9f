"""What some of the phantom study's runs answer without its other runs; writes JSON.

By default MU-Diff with each mask head:
- the mask-head ablation (spec section 3: the learned head becomes MU-Diff's default once an ablation shows it no
  worse than the published code's fixed one, a random projection; the study's config pins the learned head): MU-Diff
  is trained with each head, and the study's no-gain claim for the fixed head is tested over seeds on the held-out
  test subjects;
- the uncertainty maps of the MU-Diff runs (:func:`~mudiff.experiments.phantom_study.uncertainty_study`: whether
  the std of K draws marks the error of a draw it did not see, and the mean of the draws against one draw).

``--runs`` names other runs of the study (``phantom_study.STUDY_RUNS``): every claim of ``phantom_study.CLAIMS``
between them is tested. ``--epochs N`` trains them N epochs instead of the config's 8 (the cosine schedule ends
there), in ``runs/study_epochs<N>``: whether a claim that is inconclusive at the study's length settles with longer
training. ``--keep-best`` keeps each run's state at its best validation PSNR too (``train.keep_best``), and
``--checkpoint best`` scores those states instead of the last ones (model selection on the validation subjects).

Everything else is the study's (config, phantom, split, slice size, training seeds, the paper's normalisation), and
the runs are the study's own run folders: they resume, and ``python -m mudiff reproduce --profile study`` reuses
them.

    OMP_NUM_THREADS=1 python benchmarks/study_mudiff_runs.py --out benchmarks/results/study_mudiff_runs_cpu.json

With ``--external-subjects N`` the same runs are scored instead on N new phantom subjects (phantom seed
``--external-seed``, none of them seen in training; :func:`~mudiff.experiments.phantom_study.external_test_data`):
more held-out subjects narrow a claim's interval across subjects, which more seeds do not.
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

from mudiff.checkpoint import CHECKPOINTS
from mudiff.experiments import phantom_study as ps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="training processes at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k-draws", type=int, default=8, help="latent draws per test slice for the uncertainty maps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/study_mudiff_runs_cpu.json")
    parser.add_argument("--external-subjects", type=int, default=0, help="score on this many new subjects instead")
    parser.add_argument("--external-seed", type=int, default=1, help="phantom seed of the new subjects")
    parser.add_argument("--runs", nargs="+", default=["mudiff", "fixed_mask_head"], choices=list(ps.STUDY_RUNS),
                        help="the study's runs to train and score")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train every run this many epochs instead of the config's (runs/study_epochs<N>)")
    parser.add_argument("--keep-best", action="store_true",
                        help="runs also keep the state of their best validation PSNR (checkpoints/best.pt)")
    parser.add_argument("--checkpoint", default="last", choices=CHECKPOINTS,
                        help="score each run's last checkpoint, or its best (runs trained with --keep-best)")
    args = parser.parse_args(argv)
    overrides, runs_root = ["train.keep_best=val_psnr_mutual"] if args.keep_best else [], "runs/study"
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
        runs_root = f"runs/study_epochs{args.epochs}"
    plan = ps.StudyPlan(runs=args.runs, seeds=args.seeds, normalizations=[ps.PAPER_NORMALIZATION],
                        normalization_runs=[], size=ps.default_size(args.device), device=args.device,
                        workers=args.workers, overrides=overrides, runs_root=runs_root)
    start = time.perf_counter()
    ps.train_study(plan)
    trained = time.perf_counter() - start
    external = (ps.external_test_data(plan, args.external_subjects, args.external_seed) if args.external_subjects
                else None)
    scores = ps.score_study(plan, external=external, checkpoint=args.checkpoint)
    report = {
        "benchmark": f"the phantom study's runs {args.runs}: their claims and the uncertainty maps",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "scale": ps._scale(plan, scores),
        "checkpoint": args.checkpoint,
        "claims": ps.claims_table(scores, ps.claims_between(args.runs)).to_dict("records"),
        "seed_spread": ps.seed_spread(scores).to_dict("records"),
        "convergence": ps.convergence_table(plan).to_dict("records"),
    }
    if external:
        report.update(benchmark=f"the phantom study's runs {args.runs}: their claims on new held-out subjects",
                      test_data={n: str(path) for n, path in external.items()},
                      scale=ps._scale(plan, scores, f"new subjects (phantom seed {args.external_seed}, not trained "
                                                    "on) instead of the study's test split"))
    elif "mudiff" in args.runs and args.checkpoint == "last":
        informativeness, draw_scores = ps.uncertainty_study(plan, args.k_draws, device=args.device)
        report.update(uncertainty=informativeness.to_dict("records"), uncertainty_scores=draw_scores.to_dict("records"))
    report.update(training_seconds_this_call=trained, seconds=time.perf_counter() - start,
                  machine={"device": args.device, "cpu": platform.machine(), "torch": torch.__version__,
                           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report["claims"] + report.get("uncertainty", []), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
