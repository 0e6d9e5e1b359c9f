"""The speed levers change no result: fused norms, bf16 autocast, compiled networks and the device's auto settings
give the losses of the plain eager float32 step on the same batch (issue 9)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from mudiff.config import RunConfig
from mudiff.methods import build_method, no_wrap
from mudiff.models.layers import AdaGN, GroupNorm, ResBlock
from mudiff.runtime import memory_format, use_compile

from conftest import TINY_MODEL, forwards_past_the_wrappers


def _method(precision: torch.dtype | None, fmt: torch.memory_format, compiled: bool = False):
    """The tiny MU-Diff method (the same weights every time), set up on the CPU as the Trainer would."""
    cfg = RunConfig.from_dict({"data": {"root": "unused"}, "model": TINY_MODEL,
                               "train": {"batch_size": 4, "lazy_reg": 2}})
    torch.manual_seed(0)
    method = build_method(cfg)

    def compile_wrap(module, ddp=True, compile=True):
        # dynamo and AOT autograd build the graphs that inductor would get, but run them eagerly: inductor's C++
        # code generation costs minutes per graph on this CPU (test_inductor_compiles_the_resampling_blocks)
        return torch.compile(module, backend="aot_eager") if compile else module

    return method.setup(torch.device("cpu"), precision, fmt, compile_wrap if compiled else no_wrap)


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(4, 1, 32, 32, generator=g) * 2 - 1, torch.rand(4, 3, 32, 32, generator=g) * 2 - 1


def _losses(method, steps: int) -> list[dict[str, float]]:
    x0, sources = _batch()
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same t, noise and z for every path
        out.append({k: float(v) for k, v in method.train_step(x0, sources.contiguous(memory_format=method.memory_format),
                                                              step).items()})
    return out


def test_fused_adagn_equals_norm_then_modulation():
    norm = AdaGN(16, style_dim=6, groups=4)
    with torch.no_grad():
        norm.style.weight.normal_()
    x, style = torch.randn(3, 16, 5, 7, requires_grad=True), torch.randn(3, 6)
    fused = norm(x, style)  # contiguous: one GroupNorm over (1, B*C, H, W)
    scale, shift = norm.style(style).chunk(2, dim=1)
    reference = F.group_norm(x, 4) * scale[:, :, None, None] + shift[:, :, None, None]
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(x.contiguous(memory_format=torch.channels_last), style), reference,
                               rtol=1e-5, atol=1e-5)  # the channels-last path
    grads = torch.autograd.grad(fused.square().sum(), [norm.style.weight, x])
    ref_grads = torch.autograd.grad(reference.square().sum(), [norm.style.weight, x])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_group_norm_keeps_the_compute_dtype_under_autocast():
    norm = GroupNorm(2, 8)
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.conv2d(x, torch.randn(8, 8, 1, 1))  # bf16 under autocast
        out = norm(h)  # (CUDA's autocast would run a plain nn.GroupNorm in float32, casting around it)
    assert h.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.group_norm(h.float(), 2, norm.weight, norm.bias), rtol=2e-2, atol=2e-2)


def test_bf16_contiguous_fast_path_matches_eager_fp32_losses():
    reference = _losses(_method(None, torch.channels_last), 2)  # the CPU layout, float32, unfused AdaGN
    fast = _losses(_method(torch.bfloat16, torch.contiguous_format), 2)  # bf16 autocast, fused AdaGN
    for ref, got in zip(reference, fast):
        assert ref.keys() == got.keys() and {"loss_d", "l1", "adv", "mask", "loss_g"} <= set(ref)
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=0.05, abs=0.02), key


def test_every_training_forward_goes_through_the_wrapped_networks():
    """So that a compiled run compiles all of them (the critic step's no-grad generator pass included)."""
    method = _method(None, torch.contiguous_format)
    x0, sources = _batch()
    through, total = forwards_past_the_wrappers(method, lambda: [method.train_step(x0, sources, s) for s in (0, 1)])
    assert {name for name, _ in total} == {"MuDiff", "Critic"}
    assert through == total


@pytest.mark.slow
def test_inductor_compiles_the_resampling_blocks():
    """Inductor's code for the compiled-only paths (FIR as shifted slices, replicate padding by concatenation)
    gives the eager block's values and gradients."""
    torch.manual_seed(0)
    for resample in ("down", "up"):
        block = ResBlock(8, 16, temb_dim=12, style_dim=6, resample=resample)
        x, temb, style = torch.randn(2, 8, 16, 16, requires_grad=True), torch.randn(2, 12), torch.randn(2, 6)
        reference, compiled = block(x, temb, style), torch.compile(block)(x, temb, style)
        torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
        w = torch.randn_like(reference)
        for ref, got in zip(torch.autograd.grad((reference * w).sum(), [x, *block.parameters()]),
                            torch.autograd.grad((compiled * w).sum(), [x, *block.parameters()])):
            torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)  # float32 sums in another order


@pytest.mark.slow
def test_compiled_path_matches_eager_and_keeps_r1_exact():
    eager = _losses(_method(None, torch.contiguous_format), 3)
    method = _method(None, torch.contiguous_format, compiled=True)
    compiled = _losses(method, 3)
    assert "r1" in eager[0] and "r1" in compiled[0]  # step 0 is an R1 step: the eager critic path
    for ref, got in zip(eager, compiled):
        assert ref.keys() == got.keys()
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    graphs = dict(counters["stats"])
    assert graphs["unique_graphs"] >= 4  # the generator with and without grad, the critic trained and frozen
    x0, sources = _batch()
    for step in range(3, 6):  # R1 and plain steps again: nothing is compiled a second time
        method.train_step(x0, sources, step)
    assert dict(counters["stats"]) == graphs


def test_auto_settings_pick_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert memory_format(None, cpu) == torch.channels_last and memory_format(None, cuda) == torch.contiguous_format
    assert memory_format(False, cpu) == torch.contiguous_format and memory_format(True, cuda) == torch.channels_last
    assert use_compile(None, cuda) and not use_compile(None, cpu) and use_compile(True, cpu)


def test_replicate_pad_by_concatenation_equals_f_pad():
    from mudiff.models.layers import replicate_pad1

    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    ours, reference = torch.compile(replicate_pad1, backend="eager")(x), F.pad(x, (1, 1, 1, 1), mode="replicate")
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)  # the traced (concatenation) path
    w = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0],
                               torch.autograd.grad((reference * w).sum(), x)[0])


@pytest.mark.parametrize("resample", ["down", "up"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 4, 4), (1, 2, 5, 7)])  # odd sizes: floor(n / 2) down
def test_fir_resampling_by_shifted_slices_equals_the_convolution(resample, shape):
    from mudiff.models.layers import FIRDownsample, FIRUpsample

    module = FIRDownsample() if resample == "down" else FIRUpsample()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ours, reference = torch.compile(module, backend="eager")(x), module(x)  # traced: the shifted-slice path
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0],
                               torch.autograd.grad((reference * w).sum(), x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,groups,bias", [(1, 1, 1, True), (2, 0, 4, False), (1, 0, 2, True)])
def test_double_backward_conv_has_conv2d_values_and_derivatives(stride, padding, groups, bias):
    from mudiff.models.double_backward import conv2d, double_backward_convs

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6 if groups != 4 else 4, 4 // groups, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(w.shape[0], dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    inputs = (x, w) + ((b,) if bias else ())

    def ours(x, w, b=None):
        with double_backward_convs():
            return conv2d(x, w, b, stride, padding, groups)

    torch.testing.assert_close(ours(*inputs), F.conv2d(x, w, b, stride, padding, 1, groups), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(ours, inputs)
    assert torch.autograd.gradgradcheck(ours, inputs)  # the second derivative: R1's


def _foreign_kernels_of_r1_step(method) -> list[tuple[int, ...]]:
    """The weight shapes, other than the networks' own kernels and the FIR kernel (C, 1, 4, 4), of the
    convolutions that the dispatcher runs in one critic step with R1."""
    from torch.utils._python_dispatch import TorchDispatchMode

    own = {tuple(p.shape) for p in method.parameters() if p.dim() == 4}
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default):
                seen.append(tuple(args[2 if func == torch.ops.aten.convolution_backward.default else 1].shape))
            return func(*args, **(kwargs or {}))

    with Record():
        method.critic_step(*_batch(), 0)
    assert len(seen) > 50
    return [k for k in seen if k not in own and k[1:] != (1, 4, 4)]


def test_r1_step_gradients_equal_with_ordinary_kernels():
    """The R1 step's critic gradients are PyTorch's own, but its second derivative runs only convolutions with the
    networks' kernels: PyTorch's conv double backward runs convolutions whose kernel is an output gradient
    (B x H x W), and one per channel for the depthwise FIR down-sampling, which are very slow on a GPU."""
    from unittest import mock

    import mudiff.methods.mudiff as mudiff_method

    def critic_grads(method):
        torch.manual_seed(7)
        out = method.critic_step(*_batch(), 0)
        assert float(out["r1"]) > 0
        return [p.grad.clone() for p in method.critic.parameters() if p.grad is not None]

    ours = critic_grads(_method(None, torch.contiguous_format))
    with mock.patch.object(mudiff_method, "double_backward_convs", lambda enabled=True: contextlib.nullcontext()):
        native = critic_grads(_method(None, torch.contiguous_format))
        native_foreign = _foreign_kernels_of_r1_step(_method(None, torch.contiguous_format))
    assert len(ours) == len(native) > 10
    for got, ref in zip(ours, native):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    # the probe sees the slow path: output gradients (C, B, 32, 32) as kernels; per channel (1, B, 16, 16) for FIR
    assert any(k[-2:] == (32, 32) for k in native_foreign) and (1, 4, 16, 16) in native_foreign
    assert _foreign_kernels_of_r1_step(_method(None, torch.contiguous_format)) == []


def test_r1_step_under_bf16_autocast_matches_fp32():
    r1 = {}
    for precision in (None, torch.bfloat16):
        torch.manual_seed(7)
        r1[precision] = float(_method(precision, torch.contiguous_format).critic_step(*_batch(), 0)["r1"])
    assert r1[torch.bfloat16] == pytest.approx(r1[None], rel=0.05)
