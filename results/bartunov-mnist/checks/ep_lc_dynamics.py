"""Whether EP's free phase settles on the trained LC nets, with synchronous
updates (EP's default, Laborieux et al.) and with alternating ones (odd layers,
then even: block coordinate ascent on the energy, which cannot fall into a
2-cycle).

For each 3-epoch `ep` LC run, its best-validation model (epoch 1) and its final
one: the free phase's residual per hidden layer (the larger move of the
layer's state in two more synchronous steps, the records' `free_residual`) on
the first 128 MNIST test images, and the test error of the free phase's
read-out on the first 1,000, both after EP's 30 free steps in each order.
Needs the runs' git-ignored models. Run from the repository root:

    python results/bartunov-mnist/checks/ep_lc_dynamics.py > results/bartunov-mnist/checks/ep_lc_dynamics.md
"""
import glob
import json
import platform

import torch
from common import mnist_test

from benchmark.robustness.loading import load_model

torch.set_num_threads(1)
data, x, y = mnist_test(1000)
print("| run | model (epoch) | update order | free residual per hidden layer | test error, first 1,000 (%) |")
print("|---|---|---|---|---|")
for run in sorted(glob.glob("results/bartunov-mnist/mnist-lc-ep-seed*")):
    record = json.load(open(f"{run}/record.json"))
    if record["status"] != "complete":
        continue
    for state in ("best", "final"):
        model, rule, epoch = load_model(run, record, state, data, "cpu")
        for order in ("synchronous", "alternating"):
            rule.options["update_order"] = order
            residual = [m["free_residual"] for m in rule.layer_metrics(model, x[:128], y[:128])[:-1]]
            with torch.no_grad():
                error = 100.0 * float((model(x).argmax(1) != y).float().mean())
            print(f"| {run.split('/')[-1]} | {state} ({epoch}) | {order} | {', '.join(f'{r:.2f}' for r in residual)} | "
                  f"{error:.1f} |", flush=True)
print(f"\nEP's defaults otherwise (30 free steps from zero states); torch {torch.__version__}, "
      f"{platform.processor() or platform.machine()}, 1 thread.")
