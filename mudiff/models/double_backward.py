"""Convolutions whose second derivative is cheap: for R1 penalties (a critic differentiated twice).

PyTorch's built-in double backward of ``conv2d`` computes the weight term of the second derivative as a
convolution whose *kernel* is the whole output gradient (e.g. 256 x 256), and for a grouped convolution (the
depthwise FIR down-sampling) one such convolution per channel: 5,333 convolution calls in one R1 step of the
reference critic (``benchmarks/step_diagnostic.py r1``), with kernel shapes that convolution libraries are not
tuned for (the likely cause of slow R1 steps on a GPU, not yet measured there). Inside
:func:`double_backward_convs`, the convolutions of :class:`Conv2d` modules and of :func:`conv2d` instead run a
function whose backward is made of ordinary convolutions (a transposed convolution for the input gradient, the
weight-gradient kernel for the weight), so that differentiating it again calls the usual data- and weight-gradient
kernels. The values and gradients are the same; outside the context (every plain step, and under
``torch.compile``) nothing changes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_enabled = False


@contextlib.contextmanager
def double_backward_convs(enabled: bool = True) -> Iterator[None]:
    """Within the block (when ``enabled``), :func:`conv2d` builds graphs that are cheap to differentiate twice."""
    global _enabled
    saved, _enabled = _enabled, enabled or _enabled
    try:
        yield
    finally:
        _enabled = saved


def _input_grad(grad_out: Tensor, weight: Tensor, input_shape: torch.Size, stride: tuple[int, int],
                padding: tuple[int, int], groups: int) -> Tensor:
    """d conv2d / d input as a transposed convolution (itself differentiable with the ordinary kernels)."""
    kernel = weight.shape[-2:]
    output_padding = [input_shape[d + 2] - ((grad_out.shape[d + 2] - 1) * stride[d] - 2 * padding[d] + kernel[d])
                      for d in range(2)]
    return F.conv_transpose2d(grad_out, weight, None, stride, padding, output_padding, groups)


def _needed(ctx, i: int) -> bool:
    """Whether the running backward needs the gradient of input ``i``: it requires one, and (as the autograd engine
    knows) an asked-for gradient depends on it; R1's ``torch.autograd.grad(..., inputs=x_t)`` needs no weights'."""
    if not ctx.needs_input_grad[i]:
        return False
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)  # private: absent in some release, compute
    if will_execute is None:
        return True
    try:
        return will_execute(ctx.next_functions[i][0])
    except RuntimeError:  # raised for a leaf that autograd.grad() was asked for: needed
        return True


class _Conv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding, groups=groups)`` (dilation 1) with a backward of convolutions."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = stride, padding, groups
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        grad_x = grad_w = grad_b = None
        if _needed(ctx, 0):
            grad_x = _input_grad(grad_out, weight, x.shape, stride, padding, groups)
        if _needed(ctx, 1):
            grad_w = torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding, (1, 1), False,
                                                         (0, 0), groups, (False, True, False))[1]
        if _needed(ctx, 2):
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, groups: int = 1) -> Tensor:
    """``F.conv2d`` (dilation 1, zero padding): (B, C_in, H, W) -> (B, C_out, H', W'); inside
    :func:`double_backward_convs` with a backward that is cheap to differentiate (same values)."""
    if torch.compiler.is_compiling() or not _enabled or not torch.is_grad_enabled():
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)
    if torch.is_autocast_enabled(x.device.type):  # cast as autocast would, so that the backward sees one dtype
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    return _Conv2d.apply(x, weight, bias, pair(stride), pair(padding), groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, dilation 1) that runs :func:`conv2d`; the same parameters and state dict."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or self.dilation != (1, 1) or isinstance(self.padding, str):
            raise ValueError("Conv2d supports zero padding given in pixels and dilation 1 only")

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv2d(x, weight, bias, self.stride, self.padding, self.groups)
