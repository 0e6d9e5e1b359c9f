"""Command line: ``python -m mudiff <command> ...``; each command calls one package function."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _phantom(args: argparse.Namespace) -> int:
    from mudiff.data.phantom import generate_dataset

    paths = generate_dataset(args.out, args.subjects, seed=args.seed, kind=args.kind, resolution=args.resolution,
                             field_strength=args.field_strength, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {len(paths)} {args.kind} phantom subject(s) to {args.out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from mudiff.data.prepare import prepare_dataset

    manifest = prepare_dataset(args.data, args.out, size=args.size, slices=args.slices, dataset=args.dataset,
                               split=tuple(args.split), split_file=args.split_file, seed=args.seed,
                               dilate_lesion=args.dilate_lesion, strict=args.strict, overwrite=args.overwrite,
                               normalization=args.normalization)
    print(f"prepared slices in {args.out} (manifest: {manifest})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mudiff.train import train

    trainer = train(args.config, args.run_dir, overrides=args.set)
    print(f"run folder: {args.run_dir} (step {trainer.step}); last validation: {trainer.last_val}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from mudiff.sample import Sampler

    sampler = Sampler.from_checkpoint(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    sampler.synthesise_subject(args.subject, args.out, seed=args.seed, batch_size=args.batch_size)
    print(f"wrote synthetic {sampler.target} to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from mudiff.evaluation.evaluate import eval_dir, evaluate_run

    summary = evaluate_run(args.run_dir, split=args.split, protocol=args.protocol, seed=args.seed,
                           batch_size=args.batch_size, max_slices=args.max_slices, device=args.device,
                           data_root=args.data_root, checkpoint=args.checkpoint)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print((eval_dir(Path(args.run_dir), args.data_root, args.checkpoint) / f"{args.split}_summary.md").read_text())
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from mudiff.reproduce import NotebookFailed, reproduce

    try:
        folder = reproduce(args.profile, args.workdir, notebooks=args.notebooks)
    except NotebookFailed as err:
        print(f"mudiff reproduce: {err}", file=sys.stderr)
        return 1
    print(f"executed notebooks in {folder}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mudiff.demo import run_demo
    from mudiff.reproduce import NotebookFailed

    try:
        folder = run_demo(Path(args.workdir), quick_config=args.config)
    except NotebookFailed as err:
        print(f"mudiff demo: {err}", file=sys.stderr)
        return 1
    print(f"executed notebooks in {folder}")
    return 0


BATCH_HELP = "slices per network call (default: 80, a whole volume, on a GPU; 8 on a CPU)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mudiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write physics-based multi-contrast phantom subjects (BraTS layout)")
    p.add_argument("--out", required=True, help="output folder, one sub-folder per subject")
    p.add_argument("--subjects", type=int, required=True, help="number of subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm (1 or 2)")
    p.add_argument("--kind", choices=["tumour", "stroke", "healthy", "meningioma", "metastases"], default="tumour")
    p.add_argument("--field-strength", type=float, default=3.0, choices=[1.5, 3.0])
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_phantom)

    p = sub.add_parser("prepare", help="preprocess subject volumes into a memory-mapped slice dataset")
    p.add_argument("--data", required=True, help="folder of subjects (BraTS 2019-2023, ISLES 2015 or phantom)")
    p.add_argument("--out", required=True, help="output folder for the slice dataset")
    p.add_argument("--size", type=int, default=256, help="slice size after resizing")
    p.add_argument("--slices", type=int, default=80, help="middle axial slices kept per subject")
    p.add_argument("--dataset", default="auto", help="layout: auto, brats, isles2015")
    p.add_argument("--split", type=float, nargs=3, default=(0.7, 0.2, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--split-file", default=None, help="YAML/JSON with train/val/test subject id lists")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject-level split")
    p.add_argument("--dilate-lesion", type=int, default=0, help="3x3 dilation iterations of the lesion mask")
    p.add_argument("--normalization", default="percentile",
                   help="intensity window per volume: percentile (the paper's 1-99 percentiles of the non-zero "
                        "voxels), percentile_outside_lesion or zscore_outside_lesion (both need the lesion label)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad subject instead of skipping it")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train MU-Diff, an ablation or a baseline; resumes an existing run folder")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/quick.yaml")
    p.add_argument("--run-dir", required=True, help="run folder (config.json, stats.jsonl, checkpoints/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="synthesise the target contrast of a subject volume as NIfTI")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    p.add_argument("--subject", required=True, help="subject folder with the source contrasts")
    p.add_argument("--out", required=True, help="output .nii.gz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA copy")
    p.set_defaults(func=_sample)

    p = sub.add_parser("evaluate", help="synthesise and score a split with a trained run (writes RUN_DIR/eval/)")
    p.add_argument("--run-dir", required=True, help="run folder with checkpoints/last.pt")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", default=None, help="also write the summary JSON here")
    p.add_argument("--protocol", default="float", choices=["float", "paper"],
                   help="float: fixed normalisation, data range 1 (default); paper: the published code's protocol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--max-slices", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None, help="other prepared data to score the run on (same contrasts, "
                   "size and preprocessing as its own; writes RUN_DIR/eval/external/<its name>/)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"],
                   help="last, or best: the state at the best validation, kept with train.keep_best (writes "
                   "RUN_DIR/eval_best/)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("reproduce", help="run every notebook in order with papermill (a profile's parameters)")
    p.add_argument("--profile", default="quick", help="quick (CPU demo), full (the paper's setting, GPU), test, "
                   "or a path to a profile YAML")
    p.add_argument("--workdir", default=".", help="working directory of the notebooks (data/, runs/, figures/)")
    p.add_argument("--notebooks", nargs="*", default=None, help="stems or NN prefixes to run (default: all)")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("demo", help="the main job on the embedded phantom: data, a quick run, figures")
    p.add_argument("--workdir", default=".", help="project folder holding data/, runs/ and figures/")
    p.add_argument("--config", default="configs/quick.yaml")
    p.set_defaults(func=_demo)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that say what the user must change: one clear line, no traceback. The training errors are known once a
    command has imported the trainer (commands import lazily, so that ``--help`` does not load torch)."""
    trainer = sys.modules.get("mudiff.train")
    return (ValueError, FileNotFoundError, FileExistsError,
            *((trainer.RunInUseError, trainer.NonFiniteLossError) if trainer else ()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"mudiff {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
