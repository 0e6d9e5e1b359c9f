"""Where the GPU training step spends its time (issue 9 diagnostics); prints, writes nothing.

    python benchmarks/step_diagnostic.py profile   # torch.profiler table of 3 eager bf16 steps (reference, batch 3)
    python benchmarks/step_diagnostic.py compile   # generator fwd+bwd and no-grad fwd, eager vs compiled (default,
                                                   # reduce-overhead), and compiled train steps without an R1 step

The numbers of the run on an H200 are in results/train_cuda_notes.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_benchmark as tb  # noqa: E402


def profile(device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg, method = tb.build(tb.Variant(label="eager"), device)
    x0, sources = tb.batch(cfg, device)
    for i in range(3):
        method.train_step(x0, sources, i + 1)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for i in range(3):
            method.train_step(x0, sources, i + 1)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60))


def compile_timings(device: torch.device) -> None:
    torch._dynamo.config.automatic_dynamic_shapes = False
    for mode in [None, "default", "reduce-overhead"]:
        torch._dynamo.reset()
        counters.clear()
        cfg, method = tb.build(tb.Variant(compile=mode is not None, compile_mode=mode or "default"), device)
        x0, sources = tb.batch(cfg, device)
        gen = method.wrapped["generator"]
        t = torch.randint(0, 4, (3,), device=device)
        z, x_tp1 = torch.randn(3, cfg.model.z_dim, device=device), torch.randn_like(x0)

        def step():
            with torch.autocast("cuda", torch.bfloat16):
                p1, p2 = gen(x_tp1, sources, t, z)
            (p1.float().mean() + p2.float().mean()).backward()

        start = time.time()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        warm = time.time() - start
        start = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        train = (time.perf_counter() - start) / 10
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            gen(x_tp1, sources, t, z)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                gen(x_tp1, sources, t, z)
            torch.cuda.synchronize()
            forward = (time.perf_counter() - start) / 10
        print(mode, f"warm {warm:.0f}s gen fwd+bwd {train * 1000:.1f} ms, fwd no-grad {forward * 1000:.1f} ms",
              dict(counters["graph_break"]), dict(counters["stats"]), flush=True)
        if mode == "default":
            start = time.perf_counter()
            for i in range(3):
                method.train_step(x0, sources, i + 1)
            torch.cuda.synchronize()
            print("compile rest", time.perf_counter() - start, flush=True)
            start = time.perf_counter()
            for i in range(5):  # steps 1-5: no R1 step (lazy_reg 10)
                method.train_step(x0, sources, i + 1)
            torch.cuda.synchronize()
            print(mode, "train_step", (time.perf_counter() - start) / 5, dict(counters["graph_break"]), flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "compile"
    {"profile": profile, "compile": compile_timings}[which](torch.device("cuda"))
