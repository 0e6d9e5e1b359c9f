"""The GPU plan's instrument, ``benchmarks/train_benchmark.py``: its accounting and that its variants run; and the
fresh critic of ``benchmarks/critic_separation.py``.

A device lease is 15 minutes, and the plan runs in it without a rehearsal; a benchmark that broke since the last
lease would lose that lease's measurements. The plan's own variants run here as its ``--dry-run`` does (fp32,
dynamo's aot_eager backend), on a tiny config.
"""
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_benchmark as tb  # noqa: E402

LAZY_REG = 2  # an R1 step and a plain step among two timed steps


@pytest.fixture
def tiny_plan_config(tmp_path, monkeypatch) -> str:
    """The name of a tiny config (32x32, width 8, R1 every 2 steps) that the benchmark's variants can name."""
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps({"data": {"root": str(tmp_path / "unused")}, "model": TINY_MODEL,
                                "train": {"batch_size": 3, "lazy_reg": LAZY_REG}}))
    monkeypatch.setitem(tb.CONFIGS, "tiny", path)
    return "tiny"


class _ClockedMethod:
    """A stand-in method whose steps advance a fake clock: 5 s for an R1 step, 1 s for the others."""

    def __init__(self, clock: list[float]):
        self.clock = clock
        self.cfg = SimpleNamespace(train=SimpleNamespace(lazy_reg=4))

    def train_step(self, x0, sources, step: int) -> None:
        self.clock[0] += 5.0 if step % 4 == 0 else 1.0


def test_time_steps_weights_one_r1_step_in_lazy_reg(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(tb.time, "perf_counter", lambda: clock[0])
    timing = tb.time_steps(_ClockedMethod(clock), None, None, steps=6, device=torch.device("cpu"), warmup=2)
    # timed steps 2..7: step 4 is the R1 step (5 s), five plain steps (1 s each); warm-up steps 0 (R1) and 1
    assert timing["sec_per_r1_step"] == 5.0 and timing["sec_per_plain_step"] == 1.0
    assert timing["sec_per_step"] == (5.0 + 3 * 1.0) / 4  # what a run sees, not the mean of the window (10/6)
    assert timing["window_seconds"] == 10.0 and timing["warmup_seconds"] == 6.0


def test_derived_tflops_scale_the_counted_flops_by_batch():
    report = {"bf16_peak_tflops": 1000.0, "runs": [
        {"config": "reference", "batch_size": 3, "precision": "bf16", "sec_per_step": 0.5, "tflop_per_step": 15.0},
        {"config": "reference", "batch_size": 9, "precision": "bf16", "sec_per_step": 1.0},
        {"config": "reference", "batch_size": 3, "precision": "fp32", "sec_per_step": 1.5},
        {"config": "reference", "batch_size": 3, "error": "RuntimeError: ..."}]}
    tb._derive(report)
    runs = report["runs"]
    assert runs[0]["achieved_tflops"] == 30.0 and runs[0]["fraction_of_bf16_peak"] == 0.03
    assert runs[1]["achieved_tflops"] == 45.0  # batch 9 counts three times the FLOPs of batch 3
    assert runs[2]["achieved_tflops"] == 10.0 and "fraction_of_bf16_peak" not in runs[2]
    assert "achieved_tflops" not in runs[3]


def _dry(variant: tb.Variant, config: str) -> tb.Variant:
    return replace(tb.dry_run([(variant, {})])[0][0], config=config)


@pytest.mark.slow
def test_the_plans_eager_and_compiled_variants_measure_everything(tiny_plan_config):
    """The plan's first variant (eager, with FLOPs, kernels and sampling at 8 and 80 slices) and its compiled
    channels-last variant (kernels, compiled sampling), as its dry run runs them; snapshots are saved before each
    further measurement with what is still to come."""
    plan = tb.gpu_plan(tiny_plan_config, memory_steps=20)
    eager, eager_extra = plan[0]
    compiled, compiled_extra = next((v, extra) for v, extra in plan if v.compile and v.channels_last)
    cpu = torch.device("cpu")
    snapshots = []
    result = tb.measure(_dry(eager, tiny_plan_config), cpu, steps=2, save=snapshots.append,
                        **{**eager_extra, "memory_steps": 20})
    assert [s["not_reached"] for s in snapshots] == [["tflop_per_step", "kernels", "memory_trend", "sampling"],
                                                     ["kernels", "memory_trend", "sampling"],
                                                     ["memory_trend", "sampling"], ["sampling"]]
    assert not [k for k in result if k.endswith("_error")] and "not_reached" not in result
    for key in ("sec_per_step", "sec_per_r1_step", "sec_per_plain_step", "train_images_per_sec", "tflop_per_step"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["kernels"]["top"] and result["memory_trend"]["steps"] == 20
    assert [(s["batch_size"], s["slices"]) for s in result["sampling"]] == [(8, 8), (80, 80)]
    assert all(s["tflop"] > 0 and s["seconds"] > 0 for s in result["sampling"])

    result = tb.measure(_dry(compiled, tiny_plan_config), cpu, steps=2, **compiled_extra)
    assert not [k for k in result if k.endswith("_error")]
    assert result["compile"] and result["channels_last"] and result["kernels"]["top"]
    assert [s["compiled"] for s in result["sampling"]] == [True]


def test_a_failing_measurement_is_recorded_and_keeps_the_timings(tiny_plan_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tb, "sampling_speed", out_of_memory)
    variant = _dry(tb.Variant(label="eager"), tiny_plan_config)
    result = tb.measure(variant, torch.device("cpu"), steps=2, flops=True, sampling=(8,))
    assert result["sampling_error"] == "OutOfMemoryError: CUDA out of memory (simulated)"
    assert "sampling" not in result and result["tflop_per_step"] > 0 and result["sec_per_r1_step"] > 0


def test_the_command_writes_its_report_with_its_wall_time(tiny_plan_config, tmp_path):
    out = tmp_path / "train.json"
    assert tb.main(["--plan", "cpu", "--configs", tiny_plan_config, "--steps", "2", "--memory-steps", "0",
                    "--sample-slices", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert "error" not in run and run["config"] == tiny_plan_config and run["sampling"][0]["slices"] == 2
    assert report["elapsed_seconds"] > run["warmup_seconds"] > 0  # the whole command, not only one measurement
    assert report["driver"] is None and "cuda" in report  # a GPU's driver and CUDA version are recorded there


def test_the_gpu_driver_is_read_from_nvidia_smi_and_missing_is_none(monkeypatch):
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    monkeypatch.setattr(tb.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="580.159.04\n580.159.04\n"))
    assert tb.gpu_driver(cuda) == "580.159.04"

    def no_smi(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(tb.subprocess, "run", no_smi)
    assert tb.gpu_driver(cuda) is None and tb.gpu_driver(torch.device("cpu")) is None


def test_critic_separation_trains_a_fresh_critic_against_the_frozen_generator(tiny_run):
    """benchmarks/critic_separation.py: the trained critic's separation, then a new critic's after its own critic
    steps; the generator the critic is measured against does not change."""
    import critic_separation as cs

    from mudiff.sample import Sampler

    sampler = Sampler.from_checkpoint(tiny_run, device="cpu", use_ema=False)
    method = sampler.method
    generator = {k: v.clone() for k, v in method.generator.state_dict().items()}
    trained = {k: v.clone() for k, v in method.critic.state_dict().items()}
    seconds = cs.fresh_critic(method, steps=2, seed=0)
    assert seconds > 0 and not method.critic.training
    assert all(torch.equal(v, method.generator.state_dict()[k]) for k, v in generator.items())
    assert any(not torch.equal(v, method.critic.state_dict()[k]) for k, v in trained.items() if v.is_floating_point())
    result = cs.separation(tiny_run, "test", n=4, seed=0, fresh_steps=1)
    assert result["trained_critic"][-1]["t"] == "all" and result["fresh_critic"]["steps"] == 1
    assert {"real_above_p1", "real_above_p2"} <= set(result["fresh_critic"]["separation"][-1])
