"""The peers' standard networks, as plain PyTorch modules (biobench converts
their Linear and Conv2d layers like any user's model):

* ``lenet``: BioTorch's LeNets (Sanfiz & Akrout 2021; its repository's
  ``le_net.py``, as of its latest commit): MNIST/Fashion-MNIST conv 6, 16, 120
  (5x5, ReLU, 2x2 max pooling after the first two), FC 84 (ReLU) and the
  classes, on 32x32 inputs (BioTorch resizes MNIST to 32x32; here a bilinear
  resize is the network's first module); CIFAR-10 conv 32, 64, 128 (3x3, ReLU,
  pooling after the first two, then a global average), FC 256 (ReLU) and the
  classes. Glorot init (BioTorch's "xavier" option), zero biases.
* ``resnet20``, ``resnet56``: He et al. 2016's CIFAR-10 ResNets (3 stages of
  16, 32, 64 channels, n = 3 or 9 basic blocks each, parameter-free "option A"
  shortcuts: strided identity padded with zero channels), Kaiming init;
  ResNet-20 has 269,722 parameters, ResNet-56 853,018.
* ``torchvision:<name>``: any torchvision classification model, untrained,
  with ``num_classes`` outputs (for image folders; refused before training
  on inputs it cannot take, such as MNIST's single channel).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import INPUT_SHAPES


def lenet(family, num_classes):
    if family == "mnist":  # 32x32 after the resize: 28, 14, 10, 5, 1
        layers = [nn.Upsample(size=(32, 32), mode="bilinear", align_corners=False),
                  nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(), nn.Linear(120, 84), nn.ReLU(),
                  nn.Linear(84, num_classes)]
    elif family == "cifar10":  # 30, 15, 13, 6, 4, then the average over the 4x4 map
        layers = [nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(64, 128, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256),
                  nn.ReLU(), nn.Linear(256, num_classes)]
    else:
        raise ValueError(f"architecture 'lenet' is defined for mnist (1x28x28, resized to 32x32) and cifar10 "
                         f"(3x32x32) inputs, not {family}")
    model = nn.Sequential(*layers)
    for module in model:  # BioTorch's benchmark configs initialise with "xavier" (Glorot), biases zero
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by ``stride`` and padded with zero channels."""

    def __init__(self, extra_channels, stride):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else ZeroPadShortcut(c_out - c_in, stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(blocks_per_stage):
                stages.append(BasicBlock(c_in, c_out, stride if index == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out" if isinstance(module, nn.Conv2d) else "fan_in",
                                        nonlinearity="relu")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _resnet(depth):
    def build(family, num_classes):
        if family != "cifar10":
            raise ValueError(f"architecture 'resnet{depth}' is He et al.'s CIFAR-10 ResNet (3x32x32 inputs), "
                             f"not for {family}")
        return CifarResNet((depth - 2) // 6, num_classes, INPUT_SHAPES[family][0])
    return build


resnet20 = _resnet(20)
resnet56 = _resnet(56)

TORCHVISION_PREFIX = "torchvision:"


def torchvision_names():
    from torchvision import models
    return [TORCHVISION_PREFIX + name for name in models.list_models(module=models)]


def torchvision_model(name, family, num_classes):
    """torchvision's ``name``, untrained, with ``num_classes`` outputs, once it
    is known to run on ``family`` inputs (see :func:`check_takes_inputs`)."""
    from torchvision import models
    if name not in models.list_models(module=models):
        raise ValueError(f"unknown torchvision classification model {name!r}; e.g. "
                         f"{', '.join(models.list_models(module=models)[:6])}, ...")
    model = models.get_model(name, weights=None, num_classes=num_classes)
    check_takes_inputs(model, TORCHVISION_PREFIX + name, family)
    return model


def check_takes_inputs(model, arch, family):
    """ValueError, in one line, unless ``model`` runs on a ``family`` input.
    torchvision's networks are built for 3-channel images of some least size
    and are used as published (their stem is not adapted, unlike ResNet-20's):
    a mismatch is said before training, never met at the first step."""
    shape = INPUT_SHAPES[family]
    inputs = f"{family} inputs {'x'.join(map(str, shape))}"
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is not None and stem.in_channels != shape[0]:
        raise ValueError(f"architecture {arch!r} takes {stem.in_channels}-channel images, not {inputs}")
    training = model.training
    model.eval()  # a batch of one through batch norm, and no running statistic changes
    try:
        with torch.no_grad():
            model(torch.zeros((1,) + shape))
    except (RuntimeError, ValueError, AssertionError) as exc:  # torchvision asserts some sizes (ViT)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"architecture {arch!r} cannot take {inputs}: {reason}") from None
    finally:
        model.train(training)


def param_count(model):
    return sum(math.prod(p.shape) for p in model.parameters())
