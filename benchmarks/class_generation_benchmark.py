"""Class-conditioned generation (issue 11): sampling speed of class_ddpm and the quick-profile quality numbers;
writes JSON to benchmarks/results/.

    python benchmarks/class_generation_benchmark.py speed      # images/s: DDIM 25/50/100 steps, ancestral 1000
    python benchmarks/class_generation_benchmark.py quality    # notebook 11 in the quick profile -> its metrics
    python benchmarks/class_generation_benchmark.py evidence --workdir W --seeds 0 1 2 3 4   # issue 11's targets
    python benchmarks/class_generation_benchmark.py evidence --workdir W --seeds 0 1 2 3 4 --training-seeds
    python benchmarks/class_generation_benchmark.py classifier --workdir W --seeds 0 1 2 3 4 5   # its ceiling

``speed`` times ``generate`` of the configs/class_quick.yaml network (random weights: the cost does not depend on
them) on random labels, guidance on (two network passes per step, batched). ``quality`` runs notebook 11 with
papermill in the quick profile in ``--workdir`` and copies its metrics table (figures/11_metrics.csv: per run,
before and after the trust gate, per class and pooled) into the JSON: phantom data, minutes of CPU training, a
pipeline check rather than a result. ``evidence`` scores the runs that notebook 11 trained in ``--workdir`` (its
``--slices`` and ``--runs`` folders) once per evaluation seed (``class_generation.seed_evaluation``; one CSV per seed
in ``--workdir``/evidence/training_seed<k>, so that it resumes and seeds can run in separate processes), or with
``--training-seeds`` trains the runs anew for each seed first (resumable too), and tests issue 11's targets over the
seeds (``class_generation.target_table``). ``classifier`` trains the real-data classifier (class fidelity, the trust
gate) on labelled phantom slices at several sizes and subject counts and scores it on their val split.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _machine(device: torch.device) -> dict:
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def speed(args: argparse.Namespace) -> dict:
    from mudiff.config import load_config
    from mudiff.methods import build_method, no_wrap
    from mudiff.runtime import memory_format, resolve_device

    device = resolve_device(args.device)
    cfg = load_config(ROOT / "configs" / "class_quick.yaml")
    # set up as class_eval.load_generator does (channels-last on a CPU since 2026-11-28)
    method = build_method(cfg).setup(device, None, memory_format(cfg.train.channels_last, device), no_wrap).eval()
    rows = []
    for sampler, steps, batch in [("ddim", 25, args.batch), ("ddim", 50, args.batch), ("ddim", 100, args.batch),
                                  ("ancestral", 1000, args.ancestral_batch)]:
        labels = torch.randint(0, cfg.model.num_classes, (batch,))
        method.generate(method.generator, labels[:1], [0], steps=min(steps, 2), sampler="ddim")  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        method.generate(method.generator, labels, list(range(batch)), steps=steps, sampler=sampler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"sampler": sampler, "steps": steps, "guidance": cfg.model.guidance_scale, "batch": batch,
                     "seconds": round(seconds, 3), "images_per_sec": round(batch / seconds, 4)})
        print(rows[-1], flush=True)
    return {"benchmark": "class_ddpm sampling speed", "config": "configs/class_quick.yaml",
            "machine": _machine(device), "rows": rows}


def quality(args: argparse.Namespace) -> dict:
    import pandas as pd

    from mudiff.reproduce import reproduce

    workdir = Path(args.workdir).resolve()
    start = time.perf_counter()
    reproduce("quick", workdir, notebooks=["11"])
    table = pd.read_csv(workdir / "figures" / "11_metrics.csv")
    return {"benchmark": "notebook 11, quick profile", "note": "phantom data, short CPU runs: a pipeline check",
            "seconds": round(time.perf_counter() - start, 1), "machine": _machine(torch.device("cpu")),
            "metrics": table.to_dict(orient="records")}


def evidence(args: argparse.Namespace) -> dict:
    import pandas as pd

    from mudiff.data.labelled import load_labelled
    from mudiff.experiments import class_generation as cx
    from mudiff.experiments.comparisons import train_variants

    os.chdir(Path(args.workdir).resolve())  # notebook 11 ran here (papermill): its paths are relative to it
    data = {split: load_labelled(args.slices, split) for split in ("train", "val", "test")}
    train = data["train"]
    recipe = [f"data.root={args.slices}", f"model.num_classes={len(train.classes)}",
              f"model.image_channels={train.images.shape[1]}", f"model.image_size={train.images.shape[-1]}",
              "train.device=auto", *args.overrides]  # notebook 11's, with its OVERRIDES
    start = time.perf_counter()
    tables, folders = [], {}
    for seed in args.seeds:
        runs = {name: Path(args.runs) / name for name in args.names}  # notebook 11's runs (its SEED = 0)
        training_seed = seed if args.training_seeds else 0
        if args.training_seeds:  # the runs of this seed; seed 0's are notebook 11's (found by their config)
            runs = train_variants(ROOT / "configs" / "class_quick.yaml", {n: cx.RUNS[n] for n in args.names},
                                  Path(args.runs) / f"seed{seed}", [*recipe, f"train.seed={seed}"],
                                  reuse=list(runs.values()))
        folders[seed] = {name: str(path) for name, path in runs.items()}
        tables.append(cx.seed_evaluation(runs, data, [seed], Path("evidence") / f"training_seed{training_seed}",
                                         {"ddpm_cfg": {"guidance_scale": args.guidance}}, args.classifier_steps
                                         ).assign(training_seed=training_seed))
    metrics = pd.concat(tables, ignore_index=True)
    noise = ("training and evaluation noise: one training seed per evaluation seed" if args.training_seeds else
             "sampling and evaluation noise only: the runs are trained once (training seed 0)")
    return {"benchmark": "issue 11's targets over seeds", "note": noise, "workdir": os.getcwd(), "runs": folders,
            "seeds": args.seeds, "overrides": args.overrides, "classifier_steps": args.classifier_steps,
            "guidance_scale": args.guidance, "counts": {split: part.counts() for split, part in data.items()},
            "seconds_this_call": round(time.perf_counter() - start, 1), "machine": _machine(torch.device("cpu")),
            "targets": cx.target_table(metrics).to_dict(orient="records"),
            "pooled": metrics[metrics["class"] == "all"].to_dict(orient="records"),
            "command": " ".join(["python", *sys.argv])}


def classifier(args: argparse.Namespace) -> dict:
    import numpy as np

    from mudiff.data.labelled import load_labelled, phantom_class_slices
    from mudiff.evaluation import class_eval

    base = {"healthy": 24, "glioma": 16, "meningioma": 12, "metastases": 12}  # the evidence runs' subjects
    rows, summary = [], []
    for recipe in args.recipes:
        size, scale = (int(v) for v in recipe.split(":"))
        subjects = {c: n * scale for c, n in base.items()}
        root = Path(args.workdir) / f"slices{size}_subjects_x{scale}_{'_'.join(args.contrasts)}"
        if not (root / "manifest.json").is_file():
            phantom_class_slices(root, subjects, size=size, contrasts=args.contrasts)
        train, val = load_labelled(root, "train"), load_labelled(root, "val")
        scores = []
        for seed in args.seeds:
            model = class_eval.train_classifier(train, args.classifier_steps, seed)
            predicted = class_eval.predict_proba(model, val.images).argmax(1)
            confusion = np.zeros((len(val.classes),) * 2, int)
            np.add.at(confusion, (val.labels, predicted), 1)
            scores.append(class_eval.accuracy(model, val))
            rows.append({"size": size, "subjects": subjects, "contrasts": args.contrasts, "seed": seed, **scores[-1],
                         "confusion_true_by_predicted": confusion.tolist()})
            print(rows[-1], flush=True)
        summary.append({"size": size, "subjects_x": scale, "contrasts": args.contrasts, "train_images": len(train),
                        "val_images": len(val),
                        **{f"{k}_mean": round(float(np.mean([s[k] for s in scores])), 3) for k in scores[0]},
                        "balanced_sd": round(float(np.std([s["balanced"] for s in scores], ddof=1)), 3)})
    return {"benchmark": "the real-data classifier (class fidelity, trust gate): val-split accuracy by slice size "
            "and number of phantom subjects", "classes": list(base), "classifier_steps": args.classifier_steps,
            "seeds": args.seeds, "machine": _machine(torch.device("cpu")), "summary": summary, "rows": rows,
            "command": " ".join(["python", *sys.argv])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "quality", "evidence", "classifier"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16, help="images per DDIM batch")
    parser.add_argument("--ancestral-batch", type=int, default=4, help="images in the 1000-step ancestral batch")
    parser.add_argument("--workdir", default="runs/benchmark_class_quick",
                        help="quality: where notebook 11 runs; evidence: where it ran; classifier: where its data go")
    parser.add_argument("--slices", default="data/class_slices_long", help="evidence: labelled slices in workdir")
    parser.add_argument("--runs", default="runs/classgen_long", help="evidence: the run folders' parent in workdir")
    parser.add_argument("--names", nargs="+", default=["ddpm_cfg", "ddpm_uncond", "cwgan_gp"], help="evidence: runs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="evidence: evaluation (and training) seeds; classifier: its seeds")
    parser.add_argument("--training-seeds", action="store_true", help="evidence: train one set of runs per seed "
                        "(train.seed = the seed; notebook 11's recipe with --overrides) instead of scoring the runs "
                        "of training seed 0 at each evaluation seed")
    parser.add_argument("--overrides", nargs="*", default=["train.epochs=210"],
                        help="evidence: notebook 11's OVERRIDES, for --training-seeds")
    parser.add_argument("--classifier-steps", type=int, default=300,
                        help="evidence, classifier: training batches of the classifiers")
    parser.add_argument("--guidance", type=float, default=2.0, help="evidence: ddpm_cfg's guidance scale")
    parser.add_argument("--recipes", nargs="+", default=["32:1", "48:1", "64:1", "32:2"],
                        help="classifier: slice size:subject multiple of the labelled phantom data")
    parser.add_argument("--contrasts", nargs="+", default=["t1ce"], help="classifier: the slices' channels")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (0: its default); a busy "
                        "shared CPU slows multi-threaded kernels down by orders of magnitude")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/class_<what>_<dev>.json)")
    args = parser.parse_args(argv)
    args.out = Path(args.out).resolve() if args.out else None  # before `evidence` changes the directory
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"speed": speed, "quality": quality, "evidence": evidence, "classifier": classifier}[args.what](args)
    kind = "gpu" if result["machine"]["gpu"] else "cpu"
    out = args.out or RESULTS / f"class_{args.what}_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
