"""The locally connected layer against independent references."""

import pytest
import torch
import torch.nn.functional as F

from models.lc import LocallyConnected2d


def loop_reference(x, weight, bias, kernel, stride, padding):
    """Obviously correct: one dot product per (sample, output channel, position)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    oh = (h + 2 * padding[0] - kh) // sh + 1
    ow = (w + 2 * padding[1] - kw) // sw + 1
    out = x.new_zeros(n, weight.shape[0], oh, ow)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(n, -1)
            pos = i * ow + j
            out[:, :, i, j] = patch @ weight[:, :, pos].t()
            if bias is not None:
                out[:, :, i, j] += bias[:, pos]
    return out


SHAPES = [  # (C_in, C_out, H, W, kernel, stride, padding)
    (2, 3, 7, 6, 3, 1, 1),
    (3, 4, 9, 9, 3, 2, 1),
    (1, 2, 5, 7, (2, 3), (2, 1), (0, 1)),
    (2, 2, 8, 7, 5, 2, 2),
    (3, 5, 11, 10, 4, 3, 0),
]


def make_layer(shape, bias=True):
    c, o, h, w, k, s, p = shape
    return LocallyConnected2d(c, o, h, w, k, s, p, bias=bias).double()


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_loop_reference_forward_and_gradients(shape, bias):
    torch.manual_seed(0)
    layer = make_layer(shape, bias)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()  # not the zero init, so the per-position bias path is checked
    c, o, h, w, k, s, p = shape
    x = torch.randn(3, c, h, w, dtype=torch.double, requires_grad=True)
    out = layer(x)
    assert out.shape == (3, o, layer.out_height, layer.out_width)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_() if bias else None
    ref = loop_reference(x_ref, w_ref, b_ref, pair(k), pair(s), pair(p))
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)
    if bias:
        torch.testing.assert_close(layer.bias.grad, b_ref.grad)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (2, 1, 0), (4, 3, 2)])
def test_shared_filters_equal_conv2d(kernel, stride, padding):
    torch.manual_seed(1)
    c, o, h, w = 3, 4, 9, 11
    layer = LocallyConnected2d(c, o, h, w, kernel, stride, padding).double()
    conv_w = torch.randn(o, c, kernel, kernel, dtype=torch.double)
    conv_b = torch.randn(o, dtype=torch.double)
    with torch.no_grad():
        layer.weight.copy_(conv_w.reshape(o, -1, 1).expand_as(layer.weight))
        layer.bias.copy_(conv_b.view(o, 1).expand_as(layer.bias))
    x = torch.randn(2, c, h, w, dtype=torch.double)
    torch.testing.assert_close(layer(x), F.conv2d(x, conv_w, conv_b, stride, padding))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradcheck(shape):
    torch.manual_seed(2)
    layer = make_layer(shape)
    c, o, h, w, k, s, p = shape
    x = torch.randn(2, c, h, w, dtype=torch.double, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, d: layer(a, [b, d]), (x, weight, bias))


def test_external_weights_equal_internal_path():
    torch.manual_seed(3)
    layer = make_layer(SHAPES[1])
    x = torch.randn(4, 3, 9, 9, dtype=torch.double)
    external = [layer.weight.detach().contiguous().clone(), layer.bias.detach().contiguous().clone()]
    torch.testing.assert_close(layer(x), layer(x, external))
    hyper = LocallyConnected2d(3, 4, 9, 9, 3, 2, 1, no_weights=True)
    assert hyper.weights is None and list(hyper.parameters()) == []
    torch.testing.assert_close(hyper(x.float(), [w.float() for w in external]), layer(x).float())


def test_interface_shapes_and_properties():
    layer = LocallyConnected2d(3, 8, 10, 12, 3, stride=2, padding=1)
    assert (layer.out_height, layer.out_width) == (5, 6)
    assert layer.param_shapes == [[8, 27, 30], [8, 30]]
    assert [list(p.shape) for p in layer.weights] == layer.param_shapes
    assert LocallyConnected2d(3, 8, 10, 12, 3, bias=False).param_shapes == [[8, 27, 80]]


def test_init_uses_per_unit_fan_in():
    torch.manual_seed(4)
    layer = LocallyConnected2d(16, 32, 14, 14, 3, 2, 1)
    bound = (6.0 / (16 * 9 + 32 * 9)) ** 0.5  # Glorot with one unit's fan-in / fan-out
    assert float(layer.weight.detach().abs().max()) <= bound
    assert float(layer.weight.detach().abs().max()) > 0.95 * bound
    assert float(layer.bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize("call,match", [
    (lambda layer: layer(torch.randn(2, 3, 9, 8)), r"\[N, 3, 9, 9\], got \[2, 3, 9, 8\]"),
    (lambda layer: layer(torch.randn(3, 9, 9)), r"got \[3, 9, 9\]"),
    (lambda layer: layer(torch.randn(2, 3, 9, 9), [torch.randn(4, 27, 25)]),
     r"\[\[4, 27, 25\], \[4, 25\]\], got \[\[4, 27, 25\]\]"),
    (lambda layer: layer(torch.randn(2, 3, 9, 9), [torch.randn(4, 27, 24), torch.randn(4, 25)]),
     r"got \[\[4, 27, 24\], \[4, 25\]\]"),
])
def test_bad_input_raises_value_error_with_shapes(call, match):
    layer = LocallyConnected2d(3, 4, 9, 9, 3, 2, 1)
    with pytest.raises(ValueError, match=match):
        call(layer)


def test_bad_construction_and_missing_weights():
    with pytest.raises(ValueError, match=r"kernel 7x7 is larger than the padded input 6x6"):
        LocallyConnected2d(1, 1, 4, 4, 7, padding=1)
    with pytest.raises(ValueError, match="no_weights=True"):
        LocallyConnected2d(1, 1, 4, 4, 3, no_weights=True)(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        LocallyConnected2d(1, 1, 4, 4, (3, 3, 3))
