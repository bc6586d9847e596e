"""How far EP's own estimate of the input gradient (the rule-gradient attack's
direction) is from the true one, on the trained 3-epoch EP FC nets.

For each `ep` FC run's final model, on the first 64 MNIST test images, at
EP's defaults (30 free steps, 2 x 10 nudged) and with its phases run long
enough to settle (300 and 2 x 100), per image: the cosine between EP's estimate (`estimate_input_gradient`, the
nudged phases' contrast with the input as a parameter of Phi, nudged by the
cross-entropy's gradient at the free read-out) and the exact input gradient of
the network's prediction (`differentiable_forward`: the free phase unrolled
through autograd), the fraction of pixels whose signs agree (what FGSM and
PGD follow), and the ratio of the norms (median over images). Needs the runs' git-ignored
checkpoints. Run from the repository root:

    python results/bartunov-mnist/checks/ep_input_gradient.py > results/bartunov-mnist/checks/ep_input_gradient.md
"""
import glob
import json
import platform

import torch
import torch.nn.functional as F
from common import mnist_test

from benchmark.robustness.loading import load_model

torch.set_num_threads(1)
data, x, y = mnist_test(64)
print("| run | free, nudged steps | cosine: median (images above 0.99) | signs that agree | "
      "norm of EP's estimate / true, median |")
print("|---|---|---|---|---|")
for run in sorted(glob.glob("results/bartunov-mnist/mnist-fc-ep-seed*")):
    record = json.load(open(f"{run}/record.json"))
    model, rule, _ = load_model(run, record, "final", data, "cpu")
    for free, nudged in ((30, 10), (300, 100)):
        rule.options.update(free_steps=free, nudged_steps=nudged)
        inputs = x.clone().requires_grad_()
        logits = rule.differentiable_forward(inputs)
        (true,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), inputs)
        estimate = rule.estimate_input_gradient(x, logits.detach().softmax(1) - F.one_hot(y, logits.shape[1]))
        cosine = F.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
        signs = (estimate.sign() == true.sign()).float().mean()
        ratio = estimate.flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)
        print(f"| {run.split('/')[-1]} | {free}, 2 x {nudged} | {cosine.median():.2f} ({int((cosine > 0.99).sum())} "
              f"of {len(y)}) | {signs:.2f} | {ratio.median():.2f} |", flush=True)
print(f"\nThe first 64 MNIST test images; each run's final checkpoint (beta 0.1, symmetric nudging); "
      f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread.")
