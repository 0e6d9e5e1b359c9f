"""Where the GPU training step spends its time (issue 9 diagnostics); prints, and writes JSON where OUT is given.

    python benchmarks/step_diagnostic.py profile   # top kernels of 3 eager bf16 steps (reference, batch 3)
    python benchmarks/step_diagnostic.py compile   # generator fwd+bwd and no-grad fwd, eager vs compiled (default,
                                                   # reduce-overhead), and compiled train steps without an R1 step
    python benchmarks/step_diagnostic.py r1 [cpu] [OUT.json]   # the critic's R1 step, PyTorch's conv double
                                                   # backward vs ordinary convolutions: seconds, top ops by self time
    python benchmarks/step_diagnostic.py overhead [OUT.json]  # CPU plain steps (quick config): the critic's and
                                                   # generators' Conv2d (double_backward) vs plain F.conv2d, alternating
    python benchmarks/step_diagnostic.py fir [OUT.json]   # compiled CPU steps (quick config): FIR resampling as
                                                   # shifted slices vs depthwise convolutions, alternating
    python benchmarks/step_diagnostic.py sampling_layout [OUT.json]   # CPU sampling (quick config), contiguous vs
                                                   # channels-last networks, alternating; outputs compared

The numbers of the run on an H200 are in results/train_cuda_notes.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_benchmark as tb  # noqa: E402


def profile(device: torch.device) -> None:
    cfg, method = tb.build(tb.Variant(label="eager"), device)
    x0, sources = tb.batch(cfg, device)
    for i in range(3):
        method.train_step(x0, sources, i + 1)
    report = tb.top_kernels(method, x0, sources, device, rows=30)
    print({k: v for k, v in report.items() if k != "top"})
    for row in report["top"]:
        print(f"{row['ms_per_step']:8.2f} ms {row['share']:6.1%} {row['calls_per_step']:7.1f}x  {row['name'][:90]}")


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


def r1_step(device: torch.device, out: str | None = None) -> None:
    """The critic's part of an R1 step (forward on a real batch, R1 penalty, backward) at the reference config,
    batch 3, bf16 on CUDA and fp32 on a CPU, with R1 differentiating the critic's convolutions as PyTorch does
    ("native") and through ordinary convolutions ("ordinary", what training runs): seconds per step (alternating,
    after a warm-up of each), and of one profiled step of each: the calls of every convolution op and of copies, and
    the five (op, input shapes) with the most self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mudiff import losses
    from mudiff.config import load_config
    from mudiff.models import Critic
    from mudiff.models.double_backward import double_backward_convs
    from mudiff.runtime import autocast, configure_backends

    configure_backends(device)
    cfg = load_config(tb.CONFIGS["reference"])
    critic = Critic(cfg.model).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    g = torch.Generator(device).manual_seed(0)
    x_t, x_tp1 = (torch.randn(3, 1, 256, 256, device=device, generator=g) for _ in range(2))
    sources = torch.randn(3, cfg.model.num_sources, 256, 256, device=device, generator=g)
    t = torch.randint(0, cfg.model.num_timesteps, (3,), device=device, generator=g)

    def step(ordinary: bool) -> None:
        x = x_t.clone().requires_grad_(True)
        with autocast(device, dtype), double_backward_convs(ordinary):
            logit, _ = critic(x, x_tp1, t, sources if cfg.model.critic_sees_sources else None)
        loss = torch.nn.functional.softplus(-logit.float()).mean() + losses.r1_penalty(logit, x)
        critic.zero_grad(set_to_none=True)
        loss.backward()
        tb.synchronize(device)

    modes = {"ordinary": True, "native": False}
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    repeats = 3 if device.type == "cuda" else 2
    for ordinary in modes.values():
        step(ordinary)  # warm-up (cuDNN's algorithm search)
    for _ in range(repeats):
        for mode, ordinary in modes.items():
            start = time.perf_counter()
            step(ordinary)
            seconds[mode].append(time.perf_counter() - start)
    report = {"device": tb.gpu_name(device) or "CPU", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "precision": "bf16" if dtype else "fp32", "batch_size": 3, "image_size": 256, "seconds": seconds,
              "calls": {}, "top_ops": {}}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for mode, ordinary in modes.items():
        with torch_profile(activities=activities, record_shapes=True) as prof:
            step(ordinary)
        ops = prof.key_averages()
        report["calls"][mode] = {e.key: e.count for e in ops if "convolution" in e.key or e.key == "aten::copy_"}
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, sort), reverse=True)
        report["top_ops"][mode] = [{"op": e.key, "input_shapes": e.input_shapes, "calls": e.count,
                                    "self_ms": getattr(e, sort) / 1000} for e in events[:5]]
    print(json.dumps(report, indent=1))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def conv_overhead(out: str | None = None, rounds: int = 30) -> None:
    """Seconds per plain CPU training step (quick config, its CPU settings) with :class:`Conv2d`'s forward as
    shipped and replaced by a direct ``F.conv2d``, alternating ``rounds`` times 3 steps: the cost of the switch."""
    import statistics

    from mudiff.models.double_backward import Conv2d

    device = torch.device("cpu")
    variant = tb.Variant(config="quick", precision="fp32", channels_last=True, batch_size=4, fused_adam=False)
    cfg, method = tb.build(variant, device)
    x0, sources = tb.batch(cfg, device)
    sources = sources.contiguous(memory_format=torch.channels_last)
    forwards = {"shipped": Conv2d._conv_forward,
                "F.conv2d": lambda self, x, w, b: torch.nn.functional.conv2d(x, w, b, self.stride, self.padding, 1,
                                                                             self.groups)}
    seconds: dict[str, list[float]] = {k: [] for k in forwards}
    for i in range(3):
        method.train_step(x0, sources, i + 1)  # warm-up; steps 1-3 have no R1 step
    try:
        for r in range(rounds):
            for name in sorted(forwards, reverse=r % 2 == 1):
                Conv2d._conv_forward = forwards[name]
                start = time.perf_counter()
                for i in range(3):
                    method.train_step(x0, sources, i + 1)
                seconds[name].append((time.perf_counter() - start) / 3)
    finally:
        Conv2d._conv_forward = forwards["shipped"]
    report = {"device": "CPU", "threads": torch.get_num_threads(), "config": "quick", "steps_per_round": 3,
              "median_sec_per_step": {k: statistics.median(v) for k, v in seconds.items()}, "seconds": seconds}
    print(json.dumps(report["median_sec_per_step"]))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def compiled_fir(out: str | None = None, rounds: int = 2) -> None:
    """Seconds per compiled CPU training step (quick config, fp32, channels-last; ``train_benchmark``'s 10-step
    window) with FIR resampling as shifted slices (shipped) and as depthwise convolutions, alternating ``rounds``
    times; each variant compiles afresh (``warmup_seconds``, shorter once the inductor cache is warm)."""
    torch._dynamo.config.automatic_dynamic_shapes = False
    base = tb.Variant(config="quick", precision="fp32", channels_last=True, compile=True, batch_size=4,
                      fused_adam=False)
    runs = []
    for _ in range(rounds):
        for fir in ("slices", "conv"):
            result = tb.measure(tb.dc_replace(base, compiled_fir=fir, label=f"compiled, FIR as {fir}"),
                                torch.device("cpu"), steps=10)
            runs.append({k: result[k] for k in ("compiled_fir", "sec_per_step", "sec_per_r1_step",
                                                "sec_per_plain_step", "warmup_seconds")})
            print(json.dumps(runs[-1]), flush=True)
    report = {"device": "CPU", "threads": torch.get_num_threads(), "torch": torch.__version__, "config": "quick",
              "runs": runs}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def sampling_layout(out: str | None = None, rounds: int = 6) -> None:
    """Seconds to sample 8 slices (the Sampler's CPU batch) with the quick config's networks set up contiguous (the
    Sampler before 2026-11-28) and channels-last (training's CPU layout, the Sampler's now), alternating ``rounds``
    times, and the largest difference of their outputs for the same seeds."""
    import statistics

    from mudiff.config import load_config
    from mudiff.methods import build_method, no_wrap

    device = torch.device("cpu")
    cfg = load_config(tb.CONFIGS["quick"])
    torch.manual_seed(0)
    state = build_method(cfg).state_dict()
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    methods = {}
    for name, fmt in layouts.items():
        methods[name] = build_method(cfg)
        methods[name].load_state_dict(state)
        methods[name].setup(device, None, fmt, no_wrap).eval()
    g = torch.Generator().manual_seed(1)
    sources = torch.rand(8, cfg.model.num_sources, cfg.model.image_size, cfg.model.image_size, generator=g) * 2 - 1
    outputs = {name: m.sample(m.generator, sources, list(range(8)))[2] for name, m in methods.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    for r in range(rounds):
        for name in sorted(layouts, reverse=r % 2 == 1):
            start = time.perf_counter()
            methods[name].sample(methods[name].generator, sources, list(range(8)))
            seconds[name].append(time.perf_counter() - start)
    report = {"device": "CPU", "threads": torch.get_num_threads(), "torch": torch.__version__, "config": "quick",
              "slices": 8, "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
              "seconds": seconds,
              "max_abs_difference": (outputs["contiguous"] - outputs["channels_last"]).abs().max().item()}
    print(json.dumps({k: report[k] for k in ("median_seconds", "max_abs_difference")}))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "compile"
    if which == "overhead":
        conv_overhead(sys.argv[2] if len(sys.argv) > 2 else None)
    elif which == "fir":
        compiled_fir(sys.argv[2] if len(sys.argv) > 2 else None)
    elif which == "sampling_layout":
        sampling_layout(sys.argv[2] if len(sys.argv) > 2 else None)
    elif which == "r1":
        r1_step(torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda"), sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        {"profile": profile, "compile": compile_timings}[which](torch.device("cuda"))
