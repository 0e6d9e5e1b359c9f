"""Class-conditioned generation (issue 11): sampling speed of class_ddpm and the quick-profile quality numbers;
writes JSON to benchmarks/results/.

    python benchmarks/class_generation_benchmark.py speed      # images/s: DDIM 25/50/100 steps, ancestral 1000
    python benchmarks/class_generation_benchmark.py quality    # notebook 11 in the quick profile -> its metrics

``speed`` times ``generate`` of the configs/class_quick.yaml network (random weights: the cost does not depend on
them) on random labels, guidance on (two network passes per step, batched). ``quality`` runs notebook 11 with
papermill in the quick profile in ``--workdir`` and copies its metrics table (figures/11_metrics.csv: per run,
before and after the trust gate, per class and pooled) into the JSON: phantom data, minutes of CPU training, a
pipeline check rather than a result.
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
    from mudiff.runtime import resolve_device

    device = resolve_device(args.device)
    cfg = load_config(ROOT / "configs" / "class_quick.yaml")
    method = build_method(cfg).setup(device, None, torch.contiguous_format, no_wrap).eval()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "quality"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16, help="images per DDIM batch")
    parser.add_argument("--ancestral-batch", type=int, default=4, help="images in the 1000-step ancestral batch")
    parser.add_argument("--workdir", default="runs/benchmark_class_quick", help="quality: where notebook 11 runs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (0: its default); a busy "
                        "shared CPU slows multi-threaded kernels down by orders of magnitude")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/class_<what>_<dev>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = speed(args) if args.what == "speed" else quality(args)
    kind = "gpu" if result["machine"]["gpu"] else "cpu"
    out = Path(args.out) if args.out else RESULTS / f"class_{args.what}_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
