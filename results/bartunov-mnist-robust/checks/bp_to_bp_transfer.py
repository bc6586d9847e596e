"""The control the transfer column lacks: how well do a BP net's adversarial
examples transfer to another BP net (same architecture, another seed)?

The transfer column of the robustness tables says how much of BP's examples
fool a net trained by another rule. Transfer is weaker than a white-box attack
on any net, so that number alone does not say whether the *rule* makes the
difference: a BP net of another seed is the baseline. This check makes the
examples exactly as the transfer column does (the source's own true-gradient
examples, `benchmark.robustness.transfer.source_examples`, default protocol: 500 test
images, FGSM, PGD-40, APGD-DLR-40) on the BP run of seed s+1 (mod 3) and
evaluates them on the BP run of seed s.

It reads the BP runs (no weight decay) of results/bartunov-mnist, trained
again on the CPU with their models kept (see docs/robustness.md), and writes
bp_to_bp_transfer.md beside this file. About 1 minute on 2 cores with the
sources' examples already kept (a BP run's `robustness` evaluation keeps
them), about 13 minutes without (2 shared cores).

    python results/bartunov-mnist-robust/checks/bp_to_bp_transfer.py [--data-dir ../shared/data]
"""
import argparse
import glob
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, ROOT)

from benchmark.results import HEADLINE_EPS  # noqa: E402
from benchmark.robustness.evaluation import pixel_error  # noqa: E402
from benchmark.robustness.loading import dataset_of, load_model, model_path  # noqa: E402
from benchmark.robustness.settings import Settings  # noqa: E402
from benchmark.robustness.transfer import source_examples  # noqa: E402

RUNS = os.path.join(ROOT, "results", "bartunov-mnist")
ARCHS = ("fc", "lc", "conv")


def bp_runs(arch):
    """{seed: run folder} of the complete BP runs without weight decay that keep their model."""
    found = {}
    for path in glob.glob(os.path.join(RUNS, f"mnist-{arch}-bp-seed*", "record.json")):
        record = json.load(open(path))
        folder = os.path.dirname(path)
        if (record["status"] == "complete" and not record["config"].get("weight_decay")
                and os.path.isfile(model_path(folder, "final"))):
            found[record["config"]["seed"]] = folder
    return found


def main():
    import torch

    from benchmark.data import Split, stratified_subset
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = Settings(corruptions=()).resolved("mnist")
    data = dataset_of("mnist", args.data_dir)
    chosen = stratified_subset(data.test.labels, settings["test_subset"], seed=settings["subset_seed"])
    subset = data.test.subset(chosen)
    test = Split(subset.images, subset.labels)
    pixels, labels = test.images.float().div(255), test.labels
    headline = HEADLINE_EPS["mnist"]
    rows, strongest = [], {}
    for arch in ARCHS:
        runs = bp_runs(arch)
        seeds = sorted(runs)
        if len(seeds) < 2:
            print(f"{arch}: fewer than two BP runs with a kept model under {RUNS}; left out")
            continue
        for i, seed in enumerate(seeds):
            source_seed = seeds[(i + 1) % len(seeds)]
            source = runs[source_seed]
            source_record = json.load(open(os.path.join(source, "record.json")))
            target_record = json.load(open(os.path.join(runs[seed], "record.json")))
            model, _, _ = load_model(runs[seed], target_record, "final", data, torch.device("cpu"))
            for attack in settings["attacks"]:
                for eps in settings["eps"]:
                    if eps == 0:
                        continue
                    adv = source_examples(source, source_record, "final", attack, eps, settings, args.data_dir,
                                          torch.device("cpu"), pixels, labels)
                    error = pixel_error(model, data, adv, labels, 1000)
                    rows.append((arch, seed, source_seed, attack, eps, error))
                    if abs(eps - headline) < 1e-9:
                        strongest[(arch, seed)] = max(strongest.get((arch, seed), 0.0), error)
                    print(f"{arch} seed {source_seed} -> seed {seed}: {attack} eps {eps:g}: {error:.1f}%", flush=True)
    lines = ["# BP-to-BP transfer: a BP net's adversarial examples on a BP net of another seed", "",
             "Examples made on the BP run of seed s+1 (mod 3), evaluated on the BP run of seed s (no weight decay, "
             "3 epochs, final models, the 500 test images of the robustness protocol), from "
             "`results/bartunov-mnist`.", "",
             f"Strongest attack at eps {headline:g} (largest of {', '.join(settings['attacks'])}), mean ± std "
             f"over the 3 targets. The 'transfer from BP' column of the headline table uses the BP run of the "
             f"target's own seed, which shares the target's initial weights and batch order; this control's source "
             f"has another seed, so another initialisation and order.", "",
             "| arch | BP -> BP (other seed) |", "|---|---|"]
    for arch in ARCHS:
        values = [v for (a, _), v in strongest.items() if a == arch]
        if values:
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            lines.append(f"| {arch} | {statistics.mean(values):.1f}{spread} ({len(values)}) |")
    lines += ["", "Every attack and eps (test error, %):", "",
              "| arch | target seed | source seed | attack | eps | error |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {s} | {src} | {att} | {e:g} | {err:.1f} |" for a, s, src, att, e, err in rows]
    with open(os.path.join(HERE, "bp_to_bp_transfer.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
