"""LMI layer benchmark (issue 12): seconds and peak memory of one LMI map (``mudiff.models.lmi.lmi``) for batches of 4
images at 128^2 and 256^2, both modes, and the translation time per slice of a MIDiffusion network for 1000 and
respaced reverse steps (the LMI map plus one network evaluation per step).

Each LMI case runs in a fresh spawned process: on the CPU the peak is the private resident memory (RssAnon,
sampled from /proc every 10 ms) above that of the process before the call; on a GPU it is
``torch.cuda.max_memory_allocated``. Writes ``benchmarks/results/lmi_<device>.json``.

    python benchmarks/lmi_benchmark.py                      # CPU, 128 and 256, both modes
    python benchmarks/lmi_benchmark.py --sizes 128 --modes faithful --chunk-mib 256 32 8 2 --translation-steps 50
    PYTHONPATH=. python3 benchmarks/lmi_benchmark.py --device cuda --out $OUT/lmi_cuda.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

MIB = 2 ** 20


class _Enough(Exception):
    """Raised from the step callback once the timed steps are done."""


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _lmi_case(size: int, batch: int, mode: str, chunk_mib: float | None, device: str, threads: int, queue) -> None:
    from mudiff.models.lmi import default_chunk_bytes, lmi

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    src, tgt = (torch.rand(batch, 1, size, size, generator=gen).to(device) for _ in range(2))
    chunk_bytes = default_chunk_bytes(src.device) if chunk_mib is None else int(chunk_mib * MIB)
    lmi(src[:1, :, :8, :8], tgt[:1, :, :8, :8], mode=mode)  # warm-up (allocator, kernels)
    peak, stop = [0], threading.Event()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_anon()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_anon())
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    out = lmi(src, tgt, mode=mode, chunk_bytes=chunk_bytes)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stop.set()
    used = (torch.cuda.max_memory_allocated() if device == "cuda" else max(peak[0], _rss_anon())) - base
    queue.put({"size": size, "batch": batch, "mode": mode, "seconds": round(seconds, 3),
               "seconds_per_image": round(seconds / batch, 3), "peak_extra_mib": round(used / MIB, 1),
               "chunk_target_mib": chunk_bytes / MIB, "output_finite": bool(torch.isfinite(out).all())})


def lmi_case(size: int, batch: int, mode: str, chunk_mib: float | None, device: str, threads: int) -> dict:
    """One LMI measurement in a fresh process (``chunk_mib``: the layer's working memory; None: its default)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lmi_case, args=(size, batch, mode, chunk_mib, device, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def translation_case(size: int, steps: int, device: str, threads: int, measured_steps: int) -> dict:
    """Seconds per slice of a MIDiffusion translation with ``steps`` reverse steps, timed over the first
    ``measured_steps`` steps and scaled (every step costs the same: one LMI map, one network evaluation)."""
    from mudiff.config import load_config
    from mudiff.methods import build_method, no_wrap

    torch.set_num_threads(threads)
    cfg = load_config("configs/midiffusion_quick.yaml", [f"model.image_size={size}"])
    method = build_method(cfg).setup(torch.device(device), None, torch.contiguous_format, no_wrap).eval()
    source = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    seen = []
    start = time.perf_counter()

    def stop_early(t: int, x: torch.Tensor) -> None:
        seen.append(t)
        if len(seen) == measured_steps:
            raise _Enough

    try:
        method.translate(method.generator, source, [0], "t2", steps, on_step=stop_early)
    except _Enough:
        pass
    per_step = (time.perf_counter() - start) / len(seen)
    return {"size": size, "steps": steps, "seconds_per_slice": round(per_step * steps, 2),
            "seconds_per_step": round(per_step, 4), "measured_steps": len(seen),
            "network": "configs/midiffusion_quick.yaml (base 16, channel_mult [1, 2, 2])"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["faithful", "corrected"])
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=None,
                        help="LMI working memories to time at each size and mode (default: the layer's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--translation-size", type=int, default=32, help="slice size of the translation timing")
    parser.add_argument("--translation-steps", type=int, nargs="+", default=[1000, 50])
    parser.add_argument("--measured-steps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cases = [lmi_case(s, args.batch, m, c, args.device, args.threads)
             for s in args.sizes for m in args.modes for c in args.chunk_mib or [None]]
    for case in cases:
        print(case, flush=True)
    translation = [translation_case(args.translation_size, n, args.device, args.threads, args.measured_steps)
                   for n in args.translation_steps]
    for case in translation:
        print(case, flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    result = {"command": "python benchmarks/lmi_benchmark.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None and k != "out"),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
              "torch": torch.__version__, "threads": args.threads, "load_average_1_5_15": os.getloadavg(),
              "lmi": cases, "translation": translation,
              "note": "wall clock on a shared machine: other jobs slow these down; peak memory is the layer's own"}
    out = Path(args.out or f"benchmarks/results/lmi_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
