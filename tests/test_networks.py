"""The Bartunov et al. 2018 networks: shapes and parameter counts against the formula."""
import math

import pytest
import torch

from models import build_network, parameter_counts
from models.inputs import INPUT_SHAPES
from models.networks import same_padding


def lc_params(c_in, c_out, k, h_out, w_out):
    return c_out * c_in * k * k * h_out * w_out + c_out * h_out * w_out


def conv_params(c_in, c_out, k):
    return c_out * c_in * k * k + c_out


def fc_params(sizes):
    return [a * b + b for a, b in zip(sizes[:-1], sizes[1:])]


# Expected per-layer counts, written out from Table 3 and "same" padding.
EXPECTED = {
    ("mnist", "fc"): fc_params([784, 256, 256, 256, 256, 256, 10]),
    ("mnist", "lc"): [lc_params(1, 32, 3, 14, 14), lc_params(32, 64, 3, 7, 7)] + fc_params([7 * 7 * 64, 1024, 10]),
    ("mnist", "conv"): [conv_params(1, 32, 3), conv_params(32, 64, 3)] + fc_params([7 * 7 * 64, 1024, 10]),
    ("cifar10", "fc"): fc_params([3072, 1024, 1024, 1024, 10]),
    ("cifar10", "lc"): [lc_params(3, 64, 5, 16, 16), lc_params(64, 128, 5, 8, 8), lc_params(128, 256, 3, 8, 8)]
    + fc_params([8 * 8 * 256, 1024, 10]),
    ("cifar10", "conv"): [conv_params(3, 64, 5), conv_params(64, 128, 5), conv_params(128, 256, 3)]
    + fc_params([8 * 8 * 256, 1024, 10]),
}


@pytest.mark.parametrize("family,arch", sorted(EXPECTED))
def test_output_shape_and_parameter_counts(family, arch):
    model = build_network(arch, family, 10)
    out = model(torch.randn(2, *INPUT_SHAPES[family]))
    assert out.shape == (2, 10)
    counts = parameter_counts(model)
    assert [row["forward"] for row in counts["per_layer"]] == EXPECTED[(family, arch)]
    assert counts["forward_total"] == sum(EXPECTED[(family, arch)])
    assert counts["forward_total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_imagenet_lc_net_forward_and_count():
    model = build_network("lc", "imagenet", 1000)
    sizes = [(3, 224), (48, 56), (48, 28), (96, 28), (96, 14), (192, 14), (192, 7), (384, 7)]
    kernels = [9, 3, 5, 3, 3, 3, 3]
    expected = [lc_params(c_in, c_out, k, s_out, s_out)
                for (c_in, _), (c_out, s_out), k in zip(sizes[:-1], sizes[1:], kernels)]
    expected.append(384 * 7 * 7 * 1000 + 1000)
    counts = parameter_counts(model)
    assert [row["forward"] for row in counts["per_layer"]] == expected
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_fc_is_not_defined_for_imagenet():
    with pytest.raises(ValueError, match="'fc' is not defined for imagenet inputs 3x224x224"):
        build_network("fc", "imagenet", 1000)


@pytest.mark.parametrize("size,kernel,stride", [(28, 3, 2), (14, 3, 2), (32, 5, 2), (16, 5, 2), (8, 3, 1),
                                                (224, 9, 4), (56, 3, 2), (28, 5, 1), (7, 3, 1), (13, 4, 3)])
def test_same_padding_gives_ceil_output(size, kernel, stride):
    pad = same_padding(size, kernel, stride)
    assert (size + 2 * pad - kernel) // stride + 1 == math.ceil(size / stride)


def test_a_torchvision_network_is_checked_against_the_inputs_before_training():
    with pytest.raises(ValueError, match="'torchvision:resnet18' takes 3-channel images, not mnist inputs 1x28x28"):
        build_network("torchvision:resnet18", "mnist", 10)
    with pytest.raises(ValueError, match="'torchvision:alexnet' cannot take cifar10 inputs 3x32x32: .*too small"):
        build_network("torchvision:alexnet", "cifar10", 10)  # its pooling needs larger images
    model = build_network("torchvision:resnet18", "cifar10", 10)
    assert model.training and int(model.bn1.num_batches_tracked) == 0  # the check changed nothing


def test_a_torchvision_networks_layer_order_is_its_forward_passes(monkeypatch):
    """A network of code we did not write may register its head first; the
    rule's output layer must still be the one that runs last."""
    from torch import nn

    import models.zoo
    from models.layers import feedback_layers

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(32, 10)
            self.body = nn.Linear(28 * 28, 32)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x.flatten(1))))

    monkeypatch.setattr(models.zoo, "torchvision_model", lambda name, family, num_classes: HeadFirst())
    model = build_network("torchvision:headfirst", "mnist", 10)
    assert [layer.weight.shape[0] for layer in feedback_layers(model)] == [32, 10]
