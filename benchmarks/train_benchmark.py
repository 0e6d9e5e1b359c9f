"""Training and sampling speed of MU-Diff per configuration and per speed lever; writes JSON to benchmarks/results/.

Measures, on random batches of the right shapes (so the numbers are the step itself, not the data loader):
training images/second (and the hours that 30 epochs of a BraTS-sized set of 17,120 slices would take), the ratio
to the published code's step measured on the same GPU model (``PUBLISHED_IMAGES_PER_SEC``), peak memory, the
memory trend over many steps (must not grow), the seconds to sample an 80-slice volume, and the achieved TFLOP/s
of training and sampling (FLOPs counted with torch.utils.flop_counter) with the fraction of the GPU's dense bf16
peak.

A *variant* is one setting of the levers: precision, memory layout, torch.compile (and its mode), batch size, fused
Adam, GroupNorm in the compute dtype with AdaGN as one kernel (``norms="fused"``; ``"autocast"`` is the former
float32 norms under autocast), TF32, and how R1's double backward runs through the critic's convolutions
(``r1_convs="ordinary"``: :func:`~mudiff.models.double_backward.double_backward_convs`; ``"native"``: PyTorch's own
conv double backward), and whether FIR resampling under torch.compile is shifted slices (``compiled_fir="slices"``)
or a depthwise convolution (``"conv"``). The GPU plan (:func:`gpu_plan`) runs its variants in order of importance:
the eager variant and the shipped default first, then each lever off alone, eagerly, then the other compiled
variants; the results JSON lists every variant with what it changed, so the table of what helped is in the file.
Each variant is written to the JSON as soon as it is measured (a run cut short keeps what it measured).

    python benchmarks/train_benchmark.py                          # CPU: quick config -> results/train_cpu.json
    python benchmarks/train_benchmark.py --plan gpu --out $OUT/train_cuda.json    # the GPU plan (reference)
    python benchmarks/train_benchmark.py --plan gpu --start 2 --out ...   # the plan from its 3rd variant on
    python benchmarks/train_benchmark.py --configs reference --batch-size 1 --out ...  # reference config on a CPU
    python benchmarks/train_benchmark.py --dry-run          # the GPU plan's code paths on a CPU (minutes, not speed)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace as dc_replace
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mudiff.methods.mudiff as mudiff_method
from mudiff.config import load_config, replace
from mudiff.methods import build_method
from mudiff.models import count_parameters, layers
from mudiff.runtime import autocast_dtype, configure_backends, peak_memory_mb, resolve_device

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"quick": ROOT / "configs" / "quick.yaml", "reference": ROOT / "configs" / "brats.yaml"}
# dense bf16 peak of the GPUs we get lent (NVIDIA data sheets, SXM parts, without sparsity)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# the published code's train.py step at its README's BraTS command (batch 3, fp32, JIT CUDA FIR ops), measured in
# one run on the same machine as our former step (issue 9): a reference for that GPU model only
PUBLISHED_IMAGES_PER_SEC = {"H100": 6.33}
BRATS_TRAIN_SLICES, EPOCHS = 17_120, 30  # the target: 30 epochs of a BraTS-sized training set


@dataclass(frozen=True)
class Variant:
    """One setting of the speed levers."""

    config: str = "reference"
    precision: str = "bf16"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    batch_size: int = 3
    fused_adam: bool = True
    norms: str = "fused"  # "fused": GroupNorm in the compute dtype, AdaGN one kernel; "autocast": the former
    tf32: bool = True
    r1_convs: str = "ordinary"  # "ordinary": double_backward_convs in R1 steps; "native": PyTorch's double backward
    compiled_fir: str = "slices"  # FIR resampling under compile: "slices" (fused by the compiler) or "conv"
    compile_backend: str = "inductor"  # "aot_eager" in a dry run: dynamo and AOT autograd without code generation
    label: str = ""

    def compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` compiled as this variant compiles (its mode applies to inductor only)."""
        if self.compile_backend == "inductor":
            return torch.compile(module, mode=self.compile_mode)
        return torch.compile(module, backend=self.compile_backend)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def former_norms(enabled: bool):
    """With ``enabled``: GroupNorm as autocast runs it (float32, casts around it) and AdaGN as a GroupNorm
    followed by the modulation, i.e. the norms before the fused ones, for timing that lever off."""
    if not enabled:
        yield
        return

    def adagn(self, x, style):
        scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(shift, F.group_norm(x, self.groups), scale)

    saved = layers.GroupNorm.forward, layers.AdaGN.forward
    layers.GroupNorm.forward, layers.AdaGN.forward = torch.nn.GroupNorm.forward, adagn
    try:
        yield
    finally:
        layers.GroupNorm.forward, layers.AdaGN.forward = saved


@contextlib.contextmanager
def native_r1_convs(enabled: bool):
    """With ``enabled``: R1 steps differentiate the critic's convolutions twice as PyTorch does by itself."""
    if not enabled:
        yield
        return
    saved = mudiff_method.double_backward_convs
    mudiff_method.double_backward_convs = lambda enabled=True: contextlib.nullcontext()
    try:
        yield
    finally:
        mudiff_method.double_backward_convs = saved


@contextlib.contextmanager
def conv_fir(enabled: bool):
    """With ``enabled``: FIR resampling stays a depthwise convolution under torch.compile too."""
    if not enabled:
        yield
        return
    saved = layers.fir_as_slices
    layers.fir_as_slices = lambda: False
    try:
        yield
    finally:
        layers.fir_as_slices = saved


def build(v: Variant, device: torch.device):
    """(config, method) of a variant, set up on ``device`` as the Trainer does."""
    cfg = load_config(CONFIGS[v.config])
    cfg = replace(cfg, train={"precision": v.precision, "device": str(device), "batch_size": v.batch_size,
                              "channels_last": v.channels_last, "compile": v.compile, "compile_mode": v.compile_mode})
    configure_backends(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = v.tf32
    method = build_method(cfg)
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format

    def wrap(module, ddp=True, compile=True):
        return v.compiled(module) if compile and v.compile else module

    method.setup(device, autocast_dtype(v.precision, device), fmt, wrap)
    for opt in method.optimizers.values():
        for group in opt.param_groups:
            group["fused"], group["foreach"] = v.fused_adam and device.type == "cuda", not v.fused_adam
    return cfg, method


def batch(cfg, device: torch.device, size: int | None = None):
    b, s, n = size or cfg.train.batch_size, cfg.model.image_size, cfg.model.num_sources
    return torch.rand(b, 1, s, s, device=device) * 2 - 1, torch.rand(b, n, s, s, device=device) * 2 - 1


def time_steps(method, x0, sources, steps: int, device, warmup: int = 2) -> dict[str, float]:
    """Seconds per training iteration over ``steps`` iterations run back to back as the Trainer runs them (one R1
    step in ``lazy_reg``; no synchronisation until the end, so the CPU queues the next kernels while the GPU works),
    and of the R1 steps and the other steps apart. On CUDA each step is timed by events on the stream (the GPU's
    time from one step's start to the next, idle gaps included), elsewhere by the clock; ``window_seconds`` is the
    wall time of the whole run, ``warmup_seconds`` the first steps' (a compiled variant's compilation)."""
    start = time.perf_counter()
    for i in range(warmup):
        method.train_step(x0, sources, i)  # step 0: an R1 step, so both critic paths are compiled/warm
    synchronize(device)
    warm = time.perf_counter() - start
    cuda = device.type == "cuda"

    def stamp():
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    start = time.perf_counter()
    stamps = [stamp()]
    for i in range(warmup, warmup + steps):
        method.train_step(x0, sources, i)
        stamps.append(stamp())
    synchronize(device)
    window = time.perf_counter() - start
    seconds = [a.elapsed_time(b) / 1000 if cuda else b - a for a, b in zip(stamps, stamps[1:])]
    lazy = method.cfg.train.lazy_reg
    times: dict[bool, list[float]] = {True: [], False: []}
    for i, sec in enumerate(seconds, start=warmup):
        times[i % lazy == 0].append(sec)
    r1, plain = times[True], times[False]
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    # the average a run sees: one R1 step in lazy_reg
    per_step = (mean(r1) + (lazy - 1) * mean(plain)) / lazy if r1 and plain else mean(r1 + plain)
    return {"sec_per_step": per_step, "sec_per_r1_step": mean(r1), "sec_per_plain_step": mean(plain),
            "window_seconds": window, "warmup_seconds": warm}


def step_flops(method, x0, sources) -> int:
    """FLOPs of one training iteration (an R1 step excluded: step 1 is not a multiple of lazy_reg)."""
    with FlopCounterMode(display=False) as counter:
        method.train_step(x0, sources, 1)
    return counter.get_total_flops()


def top_kernels(method, x0, sources, device, steps: int = 3, rows: int = 25) -> dict:
    """Where ``steps`` plain training steps (no R1 step) spend their time, by torch.profiler after the variant's
    warm-up: on CUDA the ``rows`` kernels with the most GPU time, with the GPU's busy milliseconds per step against
    the wall clock's (a busy fraction well under 1 means the CPU cannot feed the GPU); elsewhere the ops with the
    most self CPU time. Each row: name, calls and milliseconds per step, share of the total."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for i in range(1, steps + 1):  # not a multiple of lazy_reg
            method.train_step(x0, sources, i)
        synchronize(device)
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    if cuda:  # kernel rows only, as the profiler's own table sums them
        events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        self_us = lambda e: e.self_device_time_total  # noqa: E731
    else:
        events = list(prof.key_averages())
        self_us = lambda e: e.self_cpu_time_total  # noqa: E731
    total = sum(self_us(e) for e in events) or 1
    top = sorted(events, key=self_us, reverse=True)[:rows]
    return {"steps": steps, "wall_ms_per_step_profiled": wall_ms, "time": "GPU kernels" if cuda else "CPU ops",
            "total_ms_per_step": total / 1000 / steps,
            **({"gpu_busy_fraction": total / 1000 / steps / wall_ms} if cuda else {}),
            "top": [{"name": e.key[:120], "calls_per_step": e.count / steps, "ms_per_step": self_us(e) / 1000 / steps,
                     "share": self_us(e) / total} for e in top]}


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


def sampling_speed(cfg, method, device, slices: int, batch_size: int, v: Variant) -> dict:
    """Seconds to synthesise ``slices`` slices (an 80-slice volume) in batches of ``batch_size``, per-slice seeds;
    on CUDA also the peak memory of sampling alone (the training step's tensors still allocated included)."""
    method.eval()
    generator = v.compiled(method.generator) if v.compile else method.generator
    _, sources = batch(cfg, device, slices)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up (and compilation) at the timed batch size
        method.sample(generator, sources[:batch_size], list(range(batch_size)))
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, slices, batch_size):
        method.sample(generator, sources[first:first + batch_size], list(range(first, first + batch_size)))
    synchronize(device)
    seconds = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:  # one slice, eager: the FLOPs do not depend on the batch
        method.sample(method.generator, sources[:1], [0])
    method.train()
    tflop = counter.get_total_flops() * slices / 1e12
    return {"slices": slices, "batch_size": batch_size, "compiled": v.compile, "precision": cfg.train.precision,
            "seconds": seconds, "slices_per_sec": slices / seconds,
            "sec_per_80_slice_volume": 80 * seconds / slices,
            "network_evaluations_per_slice": method.network_evaluations,
            "tflop": tflop, "achieved_tflops": tflop / seconds,
            **({"peak_memory_mb": peak_memory_mb(device)} if device.type == "cuda" else {})}


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else ""


def gpu_driver(device: torch.device) -> str | None:
    """The NVIDIA driver's version (as ``nvidia-smi`` reports it), or None."""
    if device.type != "cuda":
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split("\n")[0].strip() or None


def measure(v: Variant, device: torch.device, steps: int, flops: bool = False, memory_steps: int = 0,
            sampling: tuple[int, ...] = (), kernels: bool = False, save=lambda result: None) -> dict:
    """Train-step timing of a variant (and optionally FLOPs, the top kernels, the memory trend, sampling at batch
    sizes). ``save(result)`` gets the result so far before each optional measurement, with the ones still to come
    as ``not_reached``, so a run stopped in the middle of one keeps the timings; a failing optional measurement is
    recorded as ``<name>_error`` and does not lose the rest."""
    torch.manual_seed(0)
    if v.compile:
        torch._dynamo.reset()  # each compiled variant compiles afresh (the inductor cache still speeds it up)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with former_norms(v.norms == "autocast"), native_r1_convs(v.r1_convs == "native"), \
            conv_fir(v.compiled_fir == "conv"):
        cfg, method = build(v, device)
        x0, sources = batch(cfg, device)
        timing = time_steps(method, x0, sources, steps, device)
        sec = timing["sec_per_step"]
        images = cfg.train.batch_size / sec
        result = {**asdict(v), "image_size": cfg.model.image_size, "base_channels": cfg.model.base_channels,
                  "params_generators": count_parameters(method.generator),
                  "params_critic": count_parameters(method.critic) if method.critic is not None else 0,
                  "timed_steps": steps, **timing, "train_images_per_sec": images,
                  "hours_for_30_brats_epochs": EPOCHS * BRATS_TRAIN_SLICES / images / 3600,
                  "peak_memory_mb": peak_memory_mb(device)}
        gpu = gpu_name(device)
        published = next((ref for k, ref in PUBLISHED_IMAGES_PER_SEC.items() if k in gpu), None)
        if published and v.config == "reference":
            result["vs_published"] = images / published
        optional = {name: run for name, run, asked in [
            ("tflop_per_step", lambda: step_flops(method, x0, sources) / 1e12, flops),
            ("kernels", lambda: top_kernels(method, x0, sources, device), kernels),
            ("memory_trend", lambda: memory_trend(method, x0, sources, memory_steps, device), memory_steps),
            ("sampling", lambda: [sampling_speed(cfg, method, device, 80 if device.type == "cuda" else size, size, v)
                                  for size in sampling], sampling)] if asked}
        for k, (name, run) in enumerate(optional.items()):
            save({**result, "not_reached": list(optional)[k:]})
            try:
                result[name] = run()
            except Exception as err:  # noqa: BLE001 - e.g. out of memory while sampling: keep the timings
                result[f"{name}_error"] = f"{type(err).__name__}: {err}"
    return result


def gpu_plan(config: str = "reference", memory_steps: int = 200) -> list[tuple[Variant, dict]]:
    """The GPU measurements in order of importance (a run cut short keeps the first ones; ``--start`` resumes).

    A compiled variant costs minutes of compilation (232 s on an H200) and a lease is 15 minutes, start-up included,
    in calls of at most 10: one call holds the eager variant and one compiled variant, and what is left for a second
    call holds eager variants only (their warm-up took 32-39 s there). So: eager bf16 (the Sampler's path: sampling
    as it runs), the shipped default (bf16, contiguous, compiled, fused norms, fused Adam, TF32) at batch 9
    (configs/brats.yaml) with its kernels and the memory trend, then each lever off alone, eagerly, then the other
    compiled variants (batch 3, channels-last, FIR as convolutions, CUDA graphs) for a later lease."""
    shipped = Variant(config=config, compile=True, label="shipped default (compiled)")
    eager = dc_replace(shipped, compile=False, label="eager")
    return [
        # the Sampler's path: eager, 80 slices per call by default on a GPU (8 before; 8 on a CPU)
        (eager, {"flops": True, "kernels": True, "sampling": (8, 80)}),
        # the shipped BraTS config, never timed compiled yet
        (dc_replace(shipped, batch_size=9, label="shipped default, batch 9"),
         {"kernels": True, "memory_steps": memory_steps}),
        # the R1 lever off; variant 0's R1 step against the 2.32 s of train_cuda_h200_rerun.json (native then)
        # shows it too, and step_diagnostic.py r1 isolates it
        (dc_replace(eager, r1_convs="native", label="eager, R1 through PyTorch's conv double backward"), {}),
        (dc_replace(eager, batch_size=9, label="eager, batch 9"), {}),
        (dc_replace(eager, precision="fp32", label="eager fp32"), {}),
        (dc_replace(eager, norms="autocast", label="eager, former norms (float32 under autocast, AdaGN unfused)"), {}),
        # with eager sampling in channels-last: the Sampler runs eagerly, contiguous
        (dc_replace(eager, channels_last=True, label="eager, channels-last"), {"sampling": (80,)}),
        (dc_replace(eager, fused_adam=False, label="eager, foreach Adam"), {}),
        (dc_replace(eager, precision="fp32", tf32=False, label="eager fp32 without TF32"), {}),
        # no sampling here: compiled sampling was measured (2.54 s vs 2.66 s eager per volume on an H200), and
        # compiling it costs device time; the Sampler runs eagerly (variant 0)
        (shipped, {"kernels": True}),
        # inductor keeps the generator's training graph NCHW (convolutions with in >= 2 x out channels switch its
        # channels-last heuristic off); in the eager bf16 profile cuDNN's NCHW <-> NHWC conversions took 14 %
        (dc_replace(shipped, channels_last=True, label="compiled, channels-last"),
         {"kernels": True, "sampling": (80,)}),
        (dc_replace(shipped, compiled_fir="conv", label="compiled, FIR resampling as depthwise convolutions"), {}),
        (dc_replace(shipped, batch_size=9, compile_mode="reduce-overhead", label="compiled with CUDA graphs, batch 9"),
         {}),
    ]


def dry_run(plan: list[tuple[Variant, dict]]) -> list[tuple[Variant, dict]]:
    """The plan as a check, on any machine, that every variant and its measurements run (not how fast): fp32 and
    dynamo's aot_eager backend (bf16 autocast and inductor's code generation take minutes per step on a CPU)."""
    return [(dc_replace(v, precision="fp32", compile_backend="aot_eager"), extra) for v, extra in plan]


def cpu_plan(names: list[str], batch_size: int | None, memory_steps: int, sample_slices: int
             ) -> list[tuple[Variant, dict]]:
    plan = []
    for name in names:
        cfg = load_config(CONFIGS[name])
        heavy = name == "reference"  # minutes per step on a CPU: time little, skip the trend
        v = Variant(config=name, precision="fp32", channels_last=True, batch_size=batch_size or cfg.train.batch_size,
                    fused_adam=False, label=f"{name} on the CPU (its auto settings: fp32, channels-last, eager)")
        plan.append((v, {"flops": True, "memory_steps": 0 if heavy else memory_steps,
                         "sampling": (1 if heavy else sample_slices,)}))
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=("cpu", "gpu"), default=None, help="default: gpu on CUDA, else cpu")
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS),
                        help="CPU plan: the configs (default quick); GPU plan: the first (default reference)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed training iterations per variant")
    parser.add_argument("--memory-steps", type=int, default=200, help="iterations for the memory trend")
    parser.add_argument("--sample-slices", type=int, default=16, help="CPU plan: slices sampled")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU plan: batch instead of each config's")
    parser.add_argument("--start", type=int, default=0, help="skip the plan's first START variants")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/train_<device>.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check that the GPU plan runs, e.g. on a CPU before a device call: its variants in fp32 "
                             "with dynamo's aot_eager backend, the quick config, 2 steps, a 20-step memory trend, "
                             "JSON to the temp folder unless --out")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.plan, args.configs, args.steps, args.memory_steps = "gpu", ["quick"], 2, 20
        args.out = args.out or str(Path(tempfile.gettempdir()) / "train_dry_run.json")

    device = resolve_device(args.device)
    torch._dynamo.config.automatic_dynamic_shapes = False  # batch 3 and 9 are two static graphs, as in training
    plan_name = args.plan or ("gpu" if device.type == "cuda" else "cpu")
    if plan_name == "gpu":
        plan = gpu_plan((args.configs or ["reference"])[0], args.memory_steps)
    else:
        plan = cpu_plan(args.configs or ["quick"], args.batch_size, args.memory_steps, args.sample_slices)
    plan = dry_run(plan[args.start:]) if args.dry_run else plan[args.start:]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name(device)
    report = {
        "device": gpu or f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": psutil.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "driver": gpu_driver(device), "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "published_images_per_sec": next((ref for k, ref in PUBLISHED_IMAGES_PER_SEC.items() if k in gpu), None),
        "bf16_peak_tflops": next((p for k, p in PEAK_BF16_TFLOPS.items() if k in gpu), None), "runs": [],
    }
    started = time.perf_counter()

    def save(result: dict) -> None:  # the variant in progress is the last run
        report["runs"][-1] = result
        report["elapsed_seconds"] = time.perf_counter() - started  # the command's wall time so far
        _derive(report)
        out.write_text(json.dumps(report, indent=2) + "\n")

    for variant, extra in plan:
        report["runs"].append({**asdict(variant), "error": "not finished"})
        try:
            result = measure(variant, device, args.steps, save=save, **extra)
        except Exception as err:  # noqa: BLE001 - one failing lever must not lose the others' numbers
            result = {**asdict(variant), "error": f"{type(err).__name__}: {err}"}
        save(result)
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}), flush=True)
    print(f"wrote {out}")
    return 0


def _derive(report: dict) -> None:
    """TFLOP/s and the fraction of the bf16 peak of every timed variant, from the FLOPs counted once per config
    and batch size (the levers do not change the FLOPs; batch 9 is 3x batch 3)."""
    counted = {(r["config"], r["batch_size"]): r["tflop_per_step"] for r in report["runs"] if "tflop_per_step" in r}
    for r in report["runs"]:
        if "sec_per_step" not in r:
            continue
        base = next(((b, t) for (c, b), t in counted.items() if c == r["config"]), None)
        if base is None:
            continue
        tflop = base[1] * r["batch_size"] / base[0]
        r["achieved_tflops"] = tflop / r["sec_per_step"]
        if report["bf16_peak_tflops"] and r["precision"] == "bf16":
            r["fraction_of_bf16_peak"] = r["achieved_tflops"] / report["bf16_peak_tflops"]


if __name__ == "__main__":
    raise SystemExit(main())
