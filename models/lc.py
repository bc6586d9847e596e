"""Locally connected 2-D layer: a convolution whose every output position has
its own filter (no weight sharing).

Functional core
---------------
Each output position ``l`` is an independent matrix product over its receptive
field, so the whole layer is one batched GEMM over positions. Activations are
kept *position-major and batch-innermost* (memory order ``[H, W, C, N]``,
exposed as an ordinary ``[N, C, H, W]`` tensor through a permuted view), which
lets every step be a single strided copy or a single ``bmm``:

* im2col: one strided copy of the padded input into ``U[L, C*K*K, N]``;
* forward: ``out[L, C_out, N] = W[L, C_out, C*K*K] @ U + b``;
* weight gradient: ``G @ U^T``; input gradient: ``B^T @ G`` then col2im as
  ``K*K`` strided adds.

Weights keep the documented interface shape ``[C_out, C_in*K*K, H_out*W_out]``
(``param_shapes``) but are stored position-major (``[L, C_out, C_in*K*K]`` in
memory), so the GEMM operand is a free ``permute`` of the parameter.
"""
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .feedback import apply_feedback
from .layers import FeedbackLayer


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class LCGeometry:
    in_channels: int
    out_channels: int
    in_height: int
    in_width: int
    kernel: tuple
    stride: tuple
    padding: tuple

    @property
    def out_height(self):
        return (self.in_height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self):
        return (self.in_width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

    @property
    def positions(self):
        return self.out_height * self.out_width

    @property
    def receptive_field(self):
        return self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def weight_shape(self):
        return (self.out_channels, self.receptive_field, self.positions)

    @property
    def bias_shape(self):
        return (self.out_channels, self.positions)


def unfold_position_major(x, g):
    """im2col: ``x`` (logical ``[N, C, H, W]``, any strides) -> ``U[L, C*K*K, N]``.

    The receptive-field index runs over (channel, kernel row, kernel column),
    the order of ``F.unfold`` and of ``param_shapes``.
    """
    n = x.shape[0]
    (ph, pw), (kh, kw), (sh, sw) = g.padding, g.kernel, g.stride
    if ph or pw:
        xp = x.new_zeros(g.in_height + 2 * ph, g.in_width + 2 * pw, g.in_channels, n)
        xp[ph:ph + g.in_height, pw:pw + g.in_width] = x.permute(2, 3, 1, 0)
    else:
        xp = x.permute(2, 3, 1, 0)
    s_h, s_w, s_c, s_n = xp.stride()
    patches = xp.as_strided(
        (g.out_height, g.out_width, g.in_channels, kh, kw, n),
        (sh * s_h, sw * s_w, s_c, s_h, s_w, s_n),
        xp.storage_offset())
    return patches.reshape(g.positions, g.receptive_field, n)


def fold_position_major(grad_cols, g, padded=None, first_row=0):
    """col2im, the adjoint of :func:`unfold_position_major`: adds the columns
    ``[rows*W_out, C*K*K, N]`` of output rows ``first_row...`` into the padded
    input gradient ``padded`` (``[H+2p, W+2p, C, N]``, created if None)."""
    n = grad_cols.shape[-1]
    (ph, pw), (kh, kw), (sh, sw) = g.padding, g.kernel, g.stride
    ow = g.out_width
    rows = grad_cols.shape[0] // ow
    if padded is None:
        padded = grad_cols.new_zeros(g.in_height + 2 * ph, g.in_width + 2 * pw, g.in_channels, n)
    cols = grad_cols.view(rows, ow, g.in_channels, kh, kw, n)
    top = first_row * sh
    for i in range(kh):
        for j in range(kw):
            padded[top + i:top + i + sh * (rows - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw].add_(cols[:, :, :, i, j])
    return padded


def unpad(padded, g):
    """The input-sized part of a padded ``[H+2p, W+2p, C, N]`` gradient, as logical NCHW."""
    (ph, pw) = g.padding
    return padded[ph:ph + g.in_height, pw:pw + g.in_width].permute(3, 2, 0, 1)


def input_grad_chunked(grad, backward_weight_gemm, g, chunks=4):
    """Input gradient ``fold(B^T @ G)``, a band of output rows at a time, so
    the column gradient never exists whole (it is as large as the unfolded
    input) and each band is folded while still in cache."""
    rows_per_chunk = -(-g.out_height // chunks)
    padded = None
    for first in range(0, g.out_height, rows_per_chunk):
        band = slice(first * g.out_width, min(first + rows_per_chunk, g.out_height) * g.out_width)
        cols = torch.bmm(backward_weight_gemm[band].transpose(1, 2), grad[band])
        padded = fold_position_major(cols, g, padded, first_row=first)
    return unpad(padded, g)


def position_major(y, g):
    """An output-shaped ``y`` (logical NCHW) as ``[L, C_out, N]`` GEMM operands.
    Contiguous, so each position's matrix has unit inner stride: CPU ``bmm``
    would otherwise copy every position's matrix on its own, once per product
    (a gradient arriving in NCHW order, from a flatten or a target)."""
    return y.permute(2, 3, 1, 0).reshape(g.positions, g.out_channels, y.shape[0]).contiguous()


def _gemm_weight(weight):
    """Documented ``[C_out, CKK, L]`` -> GEMM operand ``[L, C_out, CKK]`` (a view)."""
    return weight.permute(2, 0, 1)


class LCOps:
    """The locally connected op for :class:`models.feedback.FeedbackFunction`."""

    def __init__(self, geometry):
        self.g = geometry

    def forward(self, x, weight, bias):
        g = self.g
        cols = unfold_position_major(x, g)
        w = _gemm_weight(weight)
        if bias is None:
            out = torch.bmm(w, cols)
        else:
            out = torch.baddbmm(bias.t().unsqueeze(2), w, cols)
        n = x.shape[0]
        return out.view(g.out_height, g.out_width, g.out_channels, n).permute(3, 2, 0, 1), cols

    def backward(self, grad_out, cols, weight, backward_weight, mask):
        g = self.g
        grad = position_major(grad_out, g)
        grad_in = grad_w = grad_b = None
        if mask[0]:
            grad_in = input_grad_chunked(grad, _gemm_weight(backward_weight), g)
        if mask[1]:
            grad_w = torch.bmm(grad, cols.transpose(1, 2)).permute(1, 2, 0)
        if mask[2]:
            grad_b = grad.sum(2).t()
        return grad_in, grad_w, grad_b


class TransposedLCFunction(torch.autograd.Function):
    """The adjoint (transpose) of the LC op with weights ``A``:
    ``y [N, C_out, H_out, W_out] -> fold(A^T y) [N, C_in, H, W]``.

    This is what an LC layer's backward does to an error, used here as a
    layer of its own with untied weights (target propagation's inverse of an
    LC layer has the sparsity of ``W^T``). Both products it needs are the LC
    forward op's: ``d/dy = A unfold(G)`` and ``d/dA = y unfold(G)^T``.
    """

    @staticmethod
    def forward(ctx, y, weight, geometry):
        g = geometry
        grad_layout = position_major(y, g)
        ctx.geometry = g
        ctx.save_for_backward(grad_layout, weight)
        return input_grad_chunked(grad_layout, _gemm_weight(weight), g)

    @staticmethod
    def backward(ctx, grad_out):
        g = ctx.geometry
        grad_layout, weight = ctx.saved_tensors
        cols = unfold_position_major(grad_out, g)  # [L, C_in*K*K, N]
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.bmm(_gemm_weight(weight), cols).view(
                g.out_height, g.out_width, g.out_channels, -1).permute(3, 2, 0, 1)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad_layout, cols.transpose(1, 2)).permute(1, 2, 0)
        return grad_y, grad_w, None


def lc_transpose(y, weight, geometry):
    """``fold(A^T y)``: the transposed LC op with weights ``A`` (``param_shapes[0]``)."""
    return TransposedLCFunction.apply(y, weight, geometry)


def position_major_parameter(shape, permutation):
    """An empty tensor of ``shape`` whose memory order is ``permutation`` of it."""
    stored = torch.empty([shape[p] for p in permutation])
    inverse = [permutation.index(i) for i in range(len(shape))]
    return nn.Parameter(stored.permute(*inverse))


class LocallyConnected2d(FeedbackLayer, nn.Module):
    """2-D locally connected layer (unshared convolution).

    Args follow the reference layer this project grew from:
    ``(in_channels, out_channels, in_height, in_width, kernel_size, stride=1,
    padding=0, bias=True, no_weights=False)``; sizes may be ints or pairs.
    ``forward(x, weights=None)``: ``weights`` (``[W, b]`` shaped as
    ``param_shapes``) replaces the internal parameters, e.g. for a hypernetwork;
    with ``no_weights=True`` the layer owns none and ``weights`` is mandatory.
    """

    def __init__(self, in_channels: int, out_channels: int, in_height: int, in_width: int,
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, bias: bool = True, no_weights: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("in_height", in_height), ("in_width", in_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        kernel = _pair(kernel_size, "kernel_size")
        stride = _pair(stride, "stride")
        padding = _pair(padding, "padding")
        if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
            raise ValueError(f"kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"kernel_size={kernel}, stride={stride}, padding={padding}")
        padded = (in_height + 2 * padding[0], in_width + 2 * padding[1])
        if kernel[0] > padded[0] or kernel[1] > padded[1]:
            raise ValueError(f"kernel {kernel[0]}x{kernel[1]} is larger than the padded input "
                             f"{padded[0]}x{padded[1]}")
        self.geometry = LCGeometry(in_channels, out_channels, in_height, in_width,
                                   kernel, stride, padding)
        self.ops = LCOps(self.geometry)
        self.has_bias = bias
        self.no_weights = no_weights
        if no_weights:
            self.weight = None
            self.bias = None
        else:
            self.weight = position_major_parameter(self.geometry.weight_shape, (2, 0, 1))
            self.bias = position_major_parameter(self.geometry.bias_shape, (1, 0)) if bias else None
            self.reset_parameters()

    # interface of the reference layer --------------------------------------
    @property
    def in_channels(self) -> int:
        return self.geometry.in_channels

    @property
    def out_channels(self) -> int:
        return self.geometry.out_channels

    @property
    def out_height(self) -> int:
        return self.geometry.out_height

    @property
    def out_width(self) -> int:
        return self.geometry.out_width

    @property
    def param_shapes(self) -> list[list[int]]:
        shapes = [list(self.geometry.weight_shape)]
        if self.has_bias:
            shapes.append(list(self.geometry.bias_shape))
        return shapes

    @property
    def weights(self) -> list[nn.Parameter] | None:
        if self.no_weights:
            return None
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def fan_in_out(self) -> tuple[int, int]:
        """Per output unit: one filter sees ``C_in*K*K`` inputs (not the whole
        3-D tensor, which would shrink the init by ~sqrt(H*W))."""
        k = self.geometry.kernel[0] * self.geometry.kernel[1]
        return self.in_channels * k, self.out_channels * k

    def extra_repr(self):
        g = self.geometry
        return (f"{g.in_channels}, {g.out_channels}, in={g.in_height}x{g.in_width}, "
                f"kernel_size={g.kernel}, stride={g.stride}, padding={g.padding}, "
                f"out={g.out_height}x{g.out_width}, bias={self.has_bias}")

    # forward ----------------------------------------------------------------
    def _check_input(self, x):
        g = self.geometry
        expected = (g.in_channels, g.in_height, g.in_width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"LocallyConnected2d expects input of shape [N, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}], got {list(x.shape)}")

    def _resolve_weights(self, weights):
        if weights is None:
            if self.no_weights:
                raise ValueError("this layer was built with no_weights=True, so forward() needs "
                                 f"weights of shapes {self.param_shapes}, got None")
            return self.weight, self.bias
        expected = self.param_shapes
        got = [list(w.shape) for w in weights] if isinstance(weights, (list, tuple)) else None
        if got != expected:
            raise ValueError(f"external weights must have shapes {expected}, got "
                             f"{got if got is not None else type(weights).__name__}")
        return weights[0], (weights[1] if self.has_bias else None)

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        self._check_input(x)
        weight, bias = self._resolve_weights(weights)
        return self.run(x, weight, bias)

    def exact(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.ops.forward(x, weight, bias)[0]
        return apply_feedback(x, weight, bias, weight, self.ops)
