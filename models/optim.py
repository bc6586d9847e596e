"""The optimizers every run and rule builds, on torch's fused kernels where
the parameters' device has them.

A fused step reads and writes each tensor once, where torch's default CPU
step makes a pass per arithmetic operation: Adam's step is 2-3x faster on
the Table 1 nets on one CPU core (`python cli.py bench --section optim`), and
a CIFAR-10 FC epoch 1.4x. The update is the same up to float rounding.

A checkpoint keeps its optimizer's flags, so a run started on the unfused
step resumes on it (``load_state_dict`` restores the saved ``fused``) and
continues exactly as it would have without the stop.
"""
import torch

# The devices biobench runs on (``--device``); torch has fused Adam and SGD
# kernels for both, for floating-point tensors.
FUSED_DEVICES = ("cpu", "cuda")


def _fusable(params):
    return bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def adam(params, **options):
    """``torch.optim.Adam(params, **options)``, fused where possible."""
    params = list(params)
    return torch.optim.Adam(params, fused=_fusable(params) or None, **options)


def sgd(params, **options):
    """``torch.optim.SGD(params, **options)``, fused where possible."""
    params = list(params)
    return torch.optim.SGD(params, fused=_fusable(params) or None, **options)


def optimizer_step(optimizer):
    """Which kernel ``optimizer`` steps with, as records say it: ``fused`` or
    ``default`` (torch's own choice: the for-loop on a CPU). Records made
    before this existed stepped with ``default``."""
    return "fused" if optimizer.param_groups[0].get("fused") else "default"
