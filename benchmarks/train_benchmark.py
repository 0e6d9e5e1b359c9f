"""Training and sampling speed of MU-Diff per configuration; writes JSON to benchmarks/results/.

Measures, on random batches of the right shapes (so the numbers are the step itself, not the data loader):
training images/second (and the hours that 30 epochs of a BraTS-sized set of 17,120 slices would take) and
peak memory, the memory trend over many steps (must not grow), sampling slices/second and seconds per 80-slice
volume, and the achieved TFLOP/s of the training step (FLOPs counted with torch.utils.flop_counter; on a GPU for
bf16 and fp32, with the fraction of the GPU's bf16 peak).

    python benchmarks/train_benchmark.py                      # quick config (+ reference on a GPU)
    python benchmarks/train_benchmark.py --configs quick reference --steps 20 --memory-steps 200
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from mudiff.config import load_config, replace
from mudiff.methods import build_method
from mudiff.models import count_parameters
from mudiff.runtime import autocast_dtype, peak_memory_mb, resolve_device

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"quick": ROOT / "configs" / "quick.yaml", "reference": ROOT / "configs" / "brats.yaml"}
# dense bf16 peak of the GPUs we get lent (NVIDIA data sheets, SXM parts, without sparsity)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
BRATS_TRAIN_SLICES, EPOCHS = 17_120, 30  # the target: 30 epochs of a BraTS-sized training set


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, device: torch.device, precision: str, batch_size: int | None = None):
    cfg = load_config(CONFIGS[name])
    cfg = replace(cfg, train={"precision": precision, "device": str(device),
                              "batch_size": batch_size or cfg.train.batch_size})
    method = build_method(cfg)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    method.setup(device, autocast_dtype(precision, device), fmt, lambda m: m)
    return cfg, method


def batch(cfg, device: torch.device, size: int | None = None):
    b, s, n = size or cfg.train.batch_size, cfg.model.image_size, cfg.model.num_sources
    return torch.rand(b, 1, s, s, device=device) * 2 - 1, torch.rand(b, n, s, s, device=device) * 2 - 1


def time_steps(method, x0, sources, steps: int, device) -> float:
    """Seconds per training iteration (critic + generator step), after two warm-up steps."""
    for i in range(2):
        method.train_step(x0, sources, i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        method.train_step(x0, sources, i + 2)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def step_flops(method, x0, sources) -> int:
    """FLOPs of one training iteration (an R1 step excluded: step 1 is not a multiple of lazy_reg)."""
    with FlopCounterMode(display=False) as counter:
        method.train_step(x0, sources, 1)
    return counter.get_total_flops()


def memory_trend(method, x0, sources, steps: int, device) -> dict:
    """Memory after 20 steps and after ``steps`` steps; a growing training step shows up as a difference."""
    readings = {}
    for i in range(steps):
        method.train_step(x0, sources, i)
        if i + 1 in (20, steps):
            synchronize(device)
            readings[i + 1] = (torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda"
                               else psutil.Process().memory_info().rss / 2**20)
    first, last = readings[20], readings[steps]
    return {"steps": steps, "mb_at_20": first, f"mb_at_{steps}": last, "growth_mb": last - first,
            "measure": "torch.cuda.memory_allocated" if device.type == "cuda" else "process RSS"}


def sampling_speed(cfg, method, device, slices: int) -> dict:
    method.eval()
    _, sources = batch(cfg, device, slices)
    method.sample(method.generator, sources[:1], [0])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    method.sample(method.generator, sources, list(range(slices)))
    synchronize(device)
    seconds = time.perf_counter() - start
    method.train()
    return {"slices": slices, "slices_per_sec": slices / seconds, "sec_per_80_slice_volume": 80 * seconds / slices,
            "network_evaluations_per_slice": 2 * cfg.model.num_timesteps}


def benchmark(name: str, device: torch.device, precision: str, steps: int, memory_steps: int,
              sample_slices: int, batch_size: int | None = None) -> dict:
    cfg, method = build(name, device, precision, batch_size)
    x0, sources = batch(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = time_steps(method, x0, sources, steps, device)
    result = {
        "config": name, "precision": precision, "image_size": cfg.model.image_size,
        "batch_size": cfg.train.batch_size, "base_channels": cfg.model.base_channels,
        "params_generators": count_parameters(method.generator),
        "params_critic": count_parameters(method.critic) if method.critic is not None else 0,
        "sec_per_step": sec, "train_images_per_sec": cfg.train.batch_size / sec,
        "hours_for_30_brats_epochs": EPOCHS * BRATS_TRAIN_SLICES * sec / cfg.train.batch_size / 3600,
        "peak_memory_mb": peak_memory_mb(device),
    }
    flops = step_flops(method, x0, sources)
    result["tflop_per_step"] = flops / 1e12
    result["achieved_tflops"] = flops / sec / 1e12
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
        if peak and precision == "bf16":
            result["fraction_of_bf16_peak"] = result["achieved_tflops"] / peak
    if memory_steps:
        result["memory_trend"] = memory_trend(method, x0, sources, memory_steps, device)
    if sample_slices:
        result["sampling"] = sampling_speed(cfg, method, device, sample_slices)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS),
                        help="default: quick on CPU, quick and reference on a GPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed training iterations")
    parser.add_argument("--memory-steps", type=int, default=200, help="iterations for the memory trend (0: skip)")
    parser.add_argument("--sample-slices", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training batch instead of each config's (e.g. 1 for the reference config on a CPU)")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/train_<device>.json)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    names = args.configs or (["quick", "reference"] if device.type == "cuda" else ["quick"])
    precisions = ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]
    torch.manual_seed(0)
    runs = []
    for name in names:
        for precision in precisions:
            heavy = name == "reference" and device.type == "cpu"  # minutes per step: time little, skip the trend
            runs.append(benchmark(name, device, precision, 1 if heavy else args.steps,
                                  0 if heavy or precision != precisions[0] else args.memory_steps,
                                  1 if heavy else args.sample_slices, args.batch_size))
            print(json.dumps(runs[-1], indent=1), flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": psutil.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": runs,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
