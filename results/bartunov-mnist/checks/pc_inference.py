"""How close strict predictive coding's relaxation gets to BP on the trained nets.

For each 3-epoch `pc` run's final model, on the first 128 MNIST test images:
the update-vs-BP angle per layer and the energy per layer after inference, at
the rule's default (rate 0.1, 20 steps) and at smaller rates run long enough
to settle. Needs the runs' git-ignored checkpoints (retrain with the grid
command in ../README.md). Run from the repository root:

    python results/bartunov-mnist/checks/pc_inference.py > results/bartunov-mnist/checks/pc_inference.md
"""
import glob
import json
import platform

import torch
from common import mnist_test

from benchmark.alignment import angle_degrees, exact_gradients
from benchmark.robustness.loading import load_model

SETTINGS = [(0.1, 20), (0.05, 40), (0.02, 100)]  # (inference_rate, inference_steps)

torch.set_num_threads(1)
data, x, y = mnist_test(128)
print("| run | rate, steps | update-vs-BP angle per layer (degrees) | energy per layer after inference |")
print("|---|---|---|---|")
for arch in ("fc", "lc"):
    for run in sorted(glob.glob(f"results/bartunov-mnist/mnist-{arch}-pc-seed*")):
        record = json.load(open(f"{run}/record.json"))
        model, rule, _ = load_model(run, record, "final", data, "cpu")
        bp = exact_gradients(model, x, y, rule)
        for rate, steps in SETTINGS:
            rule.options.update(inference_rate=rate, inference_steps=steps)
            angles = [angle_degrees(u, b) for u, b in zip(rule.weight_updates(model, x, y), bp)]
            energies = [m["energy_after"] for m in rule.layer_metrics(model, x, y)]
            print(f"| {run.split('/')[-1]} | {rate}, {steps} | {', '.join(f'{a:.0f}' for a in angles)} | "
                  f"{', '.join(f'{e:.4f}' for e in energies)} |", flush=True)
print(f"\nThe first 128 MNIST test images; each run's final checkpoint; torch {torch.__version__}, "
      f"{platform.processor() or platform.machine()}, 1 thread.")
