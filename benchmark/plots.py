"""Comparison plots from run records (matplotlib; PNG and PDF)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from models import RULES  # noqa: E402

from .io import atomic_path  # noqa: E402
from .records import load_record  # noqa: E402
from .results import (  # noqa: E402
    ARCH_ORDER,
    BIOTORCH_ARCHS,
    DATASET_TITLES,
    GRADIENT_TITLES,
    METRICS,
    OWN_PAPER_RULES,
    PART_TITLES,
    RULE_ORDER,
    arch_title,
    load_robustness,
    robustness_summary,
)

ARCH_MARKERS = {"fc": "o", "lc": "s", "conv": "^"}
UNKNOWN_RULE_COLOUR = "#7f7f7f"


def colour(label):
    """The rule's own colour (``LearningRule.colour``), the same in every plot;
    ``label`` is a rule name or a table row label such as ``bp (weight_decay=0.0001)``."""
    name = label.split(" ")[0]
    return RULES.get(name).colour if name in RULES else UNKNOWN_RULE_COLOUR


LINESTYLES, HATCHES = ("-", "--", ":", "-."), (None, "//", "..", "xx")


def variant_index(label, labels):
    """Which of its rule's rows ``label`` is (0 for the first), so rows of one
    rule that differ in a setting share a colour but not a line or hatch."""
    rule = label.split(" ")[0]
    same_rule = [other for other in _ordered_labels(labels) if other.split(" ")[0] == rule]
    return same_rule.index(label) % len(LINESTYLES)


def _ordered_labels(labels):
    """Row labels in table order: by rule (registry order), then by label."""
    def rank(label):
        rule = label.split(" ")[0]
        return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), label)
    return sorted(set(labels), key=rank)


def save(fig, out_dir, name):
    """Write ``name``.png and ``name``.pdf atomically; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _log_error_axis(axis):
    """A log-scale error axis labelled with plain numbers (1, 2, 3, 5, 10, ...),
    not powers of ten, whatever its range."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _epochs_text(epochs):
    """``[1]`` -> "1 epoch", ``[3, 60]`` -> "3, 60 epochs" (as the tables' footer)."""
    return f"{', '.join(map(str, epochs))} epoch{'' if list(epochs) == [1] else 's'}"


def _ordered(values, order):
    return [v for v in order if v in values] + sorted(set(values) - set(order))


def bar_plot(summary, out_dir, metric="best"):
    """Grouped bars: test error per rule for each arch, error bars over seeds,
    the paper's values as markers. One panel per dataset."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    width_per_panel = max(6.5, 0.16 * summary.rule.nunique() * summary.arch.nunique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(width_per_panel * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = summary[summary.dataset == dataset]
        archs = _ordered(set(part.arch), ARCH_ORDER)
        rules = _ordered_labels(part.label)
        width = 0.8 / len(rules)
        for i, rule in enumerate(rules):
            for j, arch in enumerate(archs):
                row = part[(part.arch == arch) & (part.label == rule)]
                if not len(row) or row.iloc[0]["n"] == 0:
                    continue
                r = row.iloc[0]
                x = j - 0.4 + width * (i + 0.5)
                ax.bar(x, r["mean"], width, color=colour(rule), hatch=HATCHES[variant_index(rule, rules)],
                       label=rule if j == 0 or rule not in
                       ax.get_legend_handles_labels()[1] else None,
                       yerr=r["std"] if r["n"] > 1 else None, capsize=2, edgecolor="white", linewidth=0.5)
                if r["paper"] == r["paper"]:
                    own = r["rule"] in OWN_PAPER_RULES
                    source = ("BioTorch (published)" if arch in BIOTORCH_ARCHS
                              else "Nakajima et al. 2022 (their ViT-3)" if arch == "vit"
                              else "the rule's own paper (its net)" if own else "paper (500 epochs)")
                    ax.plot(x, r["paper"], marker="s" if own else "D", color="white", markeredgecolor="black",
                            markersize=6, linestyle="none", label=source)
        ax.set_xticks(range(len(archs)), [arch_title(a) for a in archs])
        ax.set_xlabel("architecture")
        ax.set_ylabel("test error (%)")
        epochs = sorted(set(int(e) for e in part.epochs))
        ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}: {METRICS[metric][1]}\n"
                     f"({_epochs_text(epochs)}; bars: mean ± std over seeds)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    # One legend, right of the last panel (with many rules a legend inside would hide bars, and
    # one beside each panel would cover the next), holding every panel's entries once.
    unique = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=8, ncol=1 if len(unique) <= 12 else 2,
                       title="rule", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, out_dir, f"bars_{metric}")


def _load_curves(runs):
    curves = {}
    for _, run in runs[runs.status == "complete"].iterrows():
        record = load_record(run.path)
        curves.setdefault((run.dataset, run.arch, run.label), []).append(record)
    return curves


def curve_plot(runs, out_dir):
    """Test error vs epoch per (arch, rule): mean over seeds, band = min..max."""
    records = _load_curves(runs)
    paths = []
    for dataset in dict.fromkeys(runs.dataset):
        archs = _ordered({a for d, a, _ in records if d == dataset}, ARCH_ORDER)
        if not archs:
            continue
        fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.8), squeeze=False, sharey=True)
        for ax, arch in zip(axes[0], archs):
            for rule in _ordered_labels({r for d, a, r in records if d == dataset and a == arch}):
                group = records[(dataset, arch, rule)]
                length = min(len(r["curves"]["test_error"]) for r in group)
                errors = np.array([r["curves"]["test_error"][:length] for r in group])
                epochs = np.arange(1, length + 1)
                ax.plot(epochs, errors.mean(0), color=colour(rule), label=f"{rule} ({len(group)})", marker=".",
                        linestyle=LINESTYLES[variant_index(rule, [k[2] for k in records])])
                if len(group) > 1:
                    ax.fill_between(epochs, errors.min(0), errors.max(0), color=colour(rule), alpha=0.15)
            ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)}")
            ax.set_xlabel("epoch")
            # Log scale: chance-level epochs (an alternating schedule's inverse
            # epoch) would otherwise flatten every other curve.
            ax.set_yscale("log")
            _log_error_axis(ax.yaxis)
            longest = max(len(r["curves"]["test_error"]) for key, group in records.items()
                          if key[:2] == (dataset, arch) for r in group)
            ax.set_xlim(0.5, longest + 0.5)  # whole epochs, even for a 1-epoch run
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("test error (%, log scale)")
        _figure_legend(fig, axes, title="rule (seeds)", loc="upper left", bbox_to_anchor=(1.0, 0.95))
        fig.suptitle("Learning curves: mean over seeds, band = min..max", fontsize=10)
        fig.tight_layout()
        paths += save(fig, out_dir, f"curves_{dataset}")
    return paths


def _per_layer_panels(records, dataset, arch, rules, keys, height):
    """One row of panels per metric in ``keys``, one column per layer: each
    rule's per-epoch mean over seeds."""
    n_layers = len(records[(dataset, arch, rules[0])][0]["params"]["per_layer"])
    fig, axes = plt.subplots(len(keys), n_layers, figsize=(3.2 * n_layers, height), squeeze=False, sharey="row")
    for rule in rules:
        group = records[(dataset, arch, rule)]
        for layer in range(n_layers):
            for row, key in enumerate(keys):
                values = _layer_series(group, layer, key)
                if values.size == 0 or np.isnan(values).all():
                    continue
                axes[row][layer].plot(np.arange(1, values.shape[1] + 1), np.nanmean(values, 0),
                                      color=colour(rule), label=rule, marker=".",
                                      linestyle=LINESTYLES[variant_index(rule, rules)])
    return fig, axes, n_layers


def _angle_axis(axes_row):
    """0-90 degrees, or 0-180 when a line of the row goes past 90 (an update
    more than orthogonal to BP's), so no angle is drawn off the panel."""
    largest = max((np.nanmax(line.get_ydata()) for ax in axes_row for line in ax.lines
                   if np.isfinite(line.get_ydata()).any()), default=0.0)
    for ax in axes_row:
        if largest > 92:
            ax.set_ylim(-3, 183)
            ax.set_yticks([0, 45, 90, 135, 180])
        else:
            ax.set_ylim(-3, 95)


def _figure_legend(fig, axes, title="rule", **placement):
    """One legend for all panels, each rule once."""
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), title=title, fontsize=8, **(placement or {"loc": "upper right"}))


def alignment_plot(runs, out_dir):
    """W-B angle and update-vs-BP angle per layer over epochs, mean over seeds."""
    records = _load_curves(runs)
    paths = []
    for dataset, arch in dict.fromkeys((d, a) for d, a, _ in records):
        rules = [r for r in _ordered_labels({r for d, a, r in records if (d, a) == (dataset, arch)})
                 if not r.startswith("bp") and not _is_target_propagation(records[(dataset, arch, r)])]
        if not rules:
            continue
        fig, axes, n_layers = _per_layer_panels(records, dataset, arch, rules, ("wb_angle", "update_angle"), 5.6)
        for layer in range(n_layers):
            axes[0][layer].set_title(f"layer {layer + 1}" + (" (output)" if layer == n_layers - 1 else ""))
            for row in range(2):
                ax = axes[row][layer]
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
                ax.grid(alpha=0.3)
            if not axes[0][layer].lines:
                axes[0][layer].text(0.5, 0.5, "no feedback matrix:\nthe first layer sends\nno error down",
                                    ha="center", va="center", transform=axes[0][layer].transAxes, fontsize=9)
                axes[0][layer].set_xticks([])
        for row in range(2):
            _angle_axis(axes[row])
        output_angles = [np.nanmax(np.abs(line.get_ydata())) for line in axes[1][-1].lines]
        if all(angle < 0.5 for angle in output_angles):  # PC and EP's read-outs are not BP's: no such note then
            axes[1][-1].text(0.5, 0.5, "output layer: its own\nerror is exact (0 degrees)", ha="center",
                             va="center", transform=axes[1][-1].transAxes, fontsize=9)
        axes[0][0].set_ylabel("angle W vs B (degrees)")
        axes[1][0].set_ylabel("angle update vs BP gradient (degrees)")
        title = (f"Alignment, {DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)} (mean over seeds; "
                 f"the first layer has no B)")
        paths += _finish_layer_figure(fig, axes, title, (0, 0, 0.94, 0.95), out_dir, f"alignment_{dataset}_{arch}")
    return paths


def _finish_layer_figure(fig, axes, title, rect, out_dir, name):
    """One legend, the title, the layout; saved as ``name`` (PNG and PDF)."""
    _figure_legend(fig, axes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=rect)
    return save(fig, out_dir, name)


# The parts of a transformer block that records keep angles for (benchmark.alignment.block_parts), in order.


def attention_alignment_plot(runs, out_dir):
    """For networks with transformer blocks (ViT): one panel per part (rows:
    Q, K, V, attention output, MLP in, MLP out) and block (columns), the angle
    between each rule's update of that part and BP's gradient over epochs,
    mean over seeds. BP's own angles are 0 and left out, as in the alignment plot."""
    records = _load_curves(runs)
    paths = []
    for dataset, arch in dict.fromkeys((d, a) for d, a, _ in records):
        rules = [r for r in _ordered_labels({r for d, a, r in records if (d, a) == (dataset, arch)})
                 if not r.startswith("bp") and _has_parts(records[(dataset, arch, r)])]
        if not rules:
            continue
        found = [(row["block"], row["part"]) for r in rules for run in records[(dataset, arch, r)]
                 for epoch in run["alignment"] for row in epoch.get("parts", [])]
        blocks = sorted({block for block, _ in found})
        parts = sorted(dict.fromkeys(part for _, part in found),
                       key=lambda p: list(PART_TITLES).index(p) if p in PART_TITLES else len(PART_TITLES))
        fig, axes = plt.subplots(len(parts), len(blocks), figsize=(2.6 * len(blocks) + 1.6, 1.5 * len(parts) + 1.2),
                                 squeeze=False, sharex=True, sharey=True)
        for rule in rules:
            group = records[(dataset, arch, rule)]
            for row, part in enumerate(parts):
                for column, block in enumerate(blocks):
                    values = _part_series(group, block, part)
                    if values.size and not np.isnan(values).all():
                        axes[row][column].plot(np.arange(1, values.shape[1] + 1), np.nanmean(values, 0),
                                               color=colour(rule), label=rule, marker=".",
                                               linestyle=LINESTYLES[variant_index(rule, rules)])
        for column, block in enumerate(blocks):
            axes[0][column].set_title(f"block {block + 1}", fontsize=10)
            axes[-1][column].set_xlabel("epoch")
        for row, part in enumerate(parts):
            axes[row][0].set_ylabel(f"{PART_TITLES.get(part, part)}\n(degrees)", fontsize=9)
        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(alpha=0.3)
        _angle_axis(list(axes.flat))
        title = (f"Attention and MLP per block, {DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)}: angle "
                 f"between the rule's update and BP's gradient\n(degrees; fixed probe batch, mean over seeds)")
        paths += _finish_layer_figure(fig, axes, title, (0, 0, 1 - 1.3 / fig.get_figwidth(), 0.94), out_dir,
                                      f"attention_alignment_{dataset}_{arch}")
    return paths


def _has_parts(group):
    return any("parts" in epoch for r in group for epoch in r["alignment"])


def _part_series(group, block, part):
    """Per record, the per-epoch update angle of ``part`` of ``block`` (NaN where absent)."""
    series = [[next((row["update_angle"] for row in epoch.get("parts", [])
                     if (row["block"], row["part"]) == (block, part)), None) for epoch in r["alignment"]]
              for r in group]
    length = min(len(s) for s in series)
    return np.array([[np.nan if v is None else v for v in s[:length]] for s in series], dtype=float)


def _is_target_propagation(group):
    return any("reconstruction_error" in layer for r in group for epoch in r["alignment"]
               for layer in epoch["layers"])


def _layer_series(group, layer, key):
    """Per record, the per-epoch values of ``key`` at ``layer`` (NaN where absent)."""
    series = [[next((row.get(key) for row in epoch["layers"] if row["layer"] == layer), None)
               for epoch in r["alignment"]] for r in group]
    length = min(len(s) for s in series)
    return np.array([[np.nan if v is None else v for v in s[:length]] for s in series], dtype=float)


def _format_layer_panels(axes, n_layers, panels, empty_reasons, empty_default="no data"):
    """Titles, axes and scales of a grid of per-layer panels (``panels``:
    ``(key, label, scale)`` per row). A panel with no line says why
    (``empty_reasons[key]``); one whose lines are all zero says so instead
    of drawing them on a log axis."""
    for layer in range(n_layers):
        axes[0][layer].set_title(f"layer {layer + 1}" + (" (output)" if layer == n_layers - 1 else ""))
        for row, (key, label, scale) in enumerate(panels):
            ax = axes[row][layer]
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(alpha=0.3, which="both")
            reason = None
            if ax.lines and all((line.get_ydata() == 0).all() for line in ax.lines):
                for line in list(ax.lines):
                    line.remove()
                reason = ("0 at every epoch\n(PC: nodes start at\nthe feed-forward pass)"
                          if key == "energy_before" else "0 at every epoch")
            elif scale == "log" and ax.lines:
                ax.set_yscale("log")
            elif not ax.lines:
                reason = empty_reasons.get(key, empty_default)
                ax.set_xticks([])
            if reason:
                ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=9)
            if layer == 0:
                ax.set_ylabel(label)


TP_PANELS = (("update_angle", "angle update vs BP gradient (degrees)", "linear"),
             ("reconstruction_error", "inverse reconstruction error\n||h - g(f(h))||² per sample", "log"),
             ("target_distance", "||target - activation||\nper sample", "log"))


def target_propagation_plot(runs, out_dir):
    """Per layer over epochs, for the target-propagation rules: the update's
    angle to the BP gradient, the inverse's reconstruction error and the
    distance between target and activation (mean over seeds)."""
    records = _load_curves(runs)
    paths = []
    for dataset, arch in dict.fromkeys((d, a) for d, a, _ in records):
        rules = [r for r in _ordered_labels({r for d, a, r in records if (d, a) == (dataset, arch)})
                 if _is_target_propagation(records[(dataset, arch, r)])]
        if not rules:
            continue
        fig, axes, n_layers = _per_layer_panels(records, dataset, arch, rules, [k for k, _, _ in TP_PANELS], 8.0)
        _format_layer_panels(axes, n_layers, TP_PANELS, {
            "reconstruction_error": "no inverse\n(first layer, or DTP's output)",
            "target_distance": "no target\n(trained on the task loss)", "update_angle": "no data"})
        _angle_axis(axes[0])
        title = (f"Target propagation, {DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)} "
                 f"(fixed probe batch, mean over seeds)")
        paths += _finish_layer_figure(fig, axes, title, (0, 0, 0.9, 0.96), out_dir,
                                      f"target_propagation_{dataset}_{arch}")
    return paths


# What the energy-based and forward-only rules record per layer, beside the update angle.
FAMILY_PANELS = (("energy_before", "PC: energy at the\nfeed-forward pass", "log"),
                 ("energy_after", "PC: energy after\ninference", "log"),
                 ("nudge_distance", "EP: ||nudged - free||\nfixed point, per sample", "log"),
                 ("free_residual", "EP: free phase's distance\nfrom a fixed point", "log"),
                 ("goodness_positive", "FF: mean square activity,\npositive data", "linear"),
                 ("goodness_negative", "FF: mean square activity,\nnegative data", "linear"))


def family_metrics_plot(runs, out_dir):
    """Per layer over epochs, for rules that record metrics of their own (PC,
    EP, FF): each metric as a row of panels (mean over seeds)."""
    records = _load_curves(runs)
    paths = []
    for dataset, arch in dict.fromkeys((d, a) for d, a, _ in records):
        labels = [r for r in _ordered_labels({r for d, a, r in records if (d, a) == (dataset, arch)})]
        present = [(key, label, scale) for key, label, scale in FAMILY_PANELS
                   if any(key in layer for r in labels for run in records[(dataset, arch, r)]
                          for epoch in run["alignment"] for layer in epoch["layers"])]
        rules = [r for r in labels if any(key in layer for key, _, _ in present
                                          for run in records[(dataset, arch, r)] for epoch in run["alignment"]
                                          for layer in epoch["layers"])]
        if not rules:
            continue
        fig, axes, n_layers = _per_layer_panels(records, dataset, arch, rules, [k for k, _, _ in present],
                                                2.3 * len(present) + 1)
        _format_layer_panels(axes, n_layers, present, {}, "not recorded\nfor this layer")
        title = (f"Rule metrics, {DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)} "
                 f"(fixed probe batch, mean over seeds)")
        paths += _finish_layer_figure(fig, axes, title, (0, 0, 0.9, 0.96), out_dir, f"rule_metrics_{dataset}_{arch}")
    return paths


def params_plot(summary, out_dir, metric="best"):
    """Forward parameters (log x) vs test error, one marker per (arch, rule)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for _, r in summary[summary.n > 0].iterrows():
        ax.errorbar(r.forward_params, r["mean"], yerr=r["std"] if r.n > 1 else None,
                    marker=ARCH_MARKERS.get(r.arch, "o"), color=colour(r.rule), linestyle="none", capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("forward parameters (count, log scale)")
    ax.set_ylabel("test error (%)")
    datasets = ", ".join(DATASET_TITLES.get(d, d) for d in dict.fromkeys(summary.dataset))
    ax.set_title(f"Parameters vs {METRICS[metric][1]} ({datasets})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D
    rule_handles = [Line2D([], [], color=colour(r), marker="o", linestyle="none", label=r)
                    for r in _ordered(set(summary.rule), RULE_ORDER)]  # colour is per rule
    arch_handles = [Line2D([], [], color="grey", marker=ARCH_MARKERS.get(a, "o"), linestyle="none", label=arch_title(a))
                    for a in _ordered(set(summary.arch), ARCH_ORDER)]
    ax.legend(handles=rule_handles + arch_handles, fontsize=8, ncol=1 if len(rule_handles) <= 10 else 2,
              title="rule / architecture", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, out_dir, f"params_vs_error_{metric}")


def search_plot(searches, out_dir):
    """Per (dataset, arch): each search trial's validation error against its
    learning rate, one colour per rule, the chosen trial starred; shows
    whether a choice sits at the edge of the searched range."""
    from matplotlib.lines import Line2D
    cells = {}
    for record in searches:
        cells.setdefault((record["dataset"], record["arch"]), []).append(record)
    paths = []
    for (dataset, arch), records in cells.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        order = _ordered({r["algo"] for r in records}, RULE_ORDER)
        records = sorted(records, key=lambda r: order.index(r["algo"]))
        for record in records:
            done = [t for t in record["trials"] if t["best_val_error"] is not None and "lr" in t["settings"]]
            ax.scatter([t["settings"]["lr"] for t in done], [t["best_val_error"] for t in done], s=18,
                       color=colour(record["algo"]), alpha=0.75, label=record["algo"])
            chosen = record.get("chosen")
            if chosen and "lr" in chosen["settings"]:
                ax.scatter([chosen["settings"]["lr"]], [chosen["best_val_error"]], s=130, marker="*",
                           color=colour(record["algo"]), edgecolors="black", linewidths=0.8, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_error_axis(ax.yaxis)
        ax.set_xlabel("Adam learning rate (log scale)")
        ax.set_ylabel("trial's best validation error (%, log scale)")
        trials = sorted({len(r["trials"]) for r in records})
        epochs = sorted({r["epochs"] for r in records})
        ax.set_title(f"Random search, {DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)}: "
                     f"{'/'.join(map(str, trials))} trials per rule, {_epochs_text(epochs)}",
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], marker="*", color="grey", markeredgecolor="black", markersize=11,
                              linestyle="none"))
        labels.append("chosen")
        ax.legend(handles, labels, fontsize=8, ncol=1 if len(labels) <= 12 else 2, title="rule",
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
        paths += save(fig, out_dir, f"search_{dataset}_{arch}")
    return paths


def robustness_plot(runs, out_dir, warn=None):
    """Test error against eps, one line per rule (mean ± std over seeds); one
    figure per dataset and kept model state. Panels: one per architecture
    (columns) and attack x gradient (rows); with a single architecture, the
    attacks as rows and the gradients as columns. Nothing without robustness
    results."""
    rows = load_robustness(runs, warn)
    paths = []
    for state in ("final", "best"):
        everything = robustness_summary(rows[rows.kind == "attack"], state)
        paths += _headline_plot(everything[everything.kind == "headline"], state, out_dir)
        summary = everything[everything.kind == "attack"]
        for dataset in dict.fromkeys(summary.dataset):
            part = summary[summary.dataset == dataset]
            archs = _ordered(set(part.arch), ARCH_ORDER)
            if len(archs) == 1:
                attacks = list(dict.fromkeys(part.attack))
                gradients = [g for g in GRADIENT_TITLES if g in set(part.gradient)]
                panels = {(archs[0], a, g): (i, j) for i, a in enumerate(attacks) for j, g in enumerate(gradients)}
                shape = (len(attacks), len(gradients))
            else:
                kinds = list(dict.fromkeys(zip(part.attack, part.gradient)))
                panels = {(arch, a, g): (i, j) for i, (a, g) in enumerate(kinds) for j, arch in enumerate(archs)}
                shape = (len(kinds), len(archs))
            legend_width = 2.4  # inches kept free on the right for the figure legend
            width = 4.2 * shape[1] + legend_width
            fig, axes = plt.subplots(*shape, figsize=(width, 3.2 * shape[0]), squeeze=False, sharey=True)
            labels = _ordered_labels(part.label)
            for ax in axes.flat:
                ax.set_visible(False)
            for (arch, attack, gradient), (i, j) in panels.items():
                ax = axes[i][j]
                cell = part[(part.attack == attack) & (part.gradient == gradient) & (part.arch == arch)]
                if cell.empty:
                    continue
                ax.set_visible(True)
                for label in labels:
                    line = cell[cell.label == label].sort_values("eps")
                    if line.empty:
                        continue
                    ax.errorbar(line.eps, line["mean"], yerr=line["std"].fillna(0), label=label,
                                color=colour(label), linestyle=LINESTYLES[variant_index(label, labels)],
                                marker="o", markersize=3, capsize=2, linewidth=1.2)
                ax.set_title(f"{arch_title(arch)}: {attack.upper()}, {GRADIENT_TITLES.get(gradient, gradient)}",
                             fontsize=9)
                ax.set_xlabel("eps (L-inf, pixels in [0, 1])")
                ax.set_ylabel("test error (%)")
                ax.set_ylim(0, 100)
                ax.grid(alpha=0.3)
            fig.suptitle(f"{DATASET_TITLES.get(dataset, dataset)}: adversarial error of the {state} models "
                         f"(mean ± std over seeds)")
            fig.tight_layout(rect=(0, 0, 1 - legend_width / width, 0.97))
            _figure_legend(fig, axes, loc="center right")
            paths += save(fig, out_dir, f"robustness_{state}_{dataset}")
    return paths


HEADLINE_BARS = (("clean", "", "clean", "#bbbbbb"), ("strongest", "true", "true gradient", "#d62728"),
                 ("strongest", "rule", "rule gradient", "#1f77b4"),
                 ("strongest", "transfer", "transfer from BP", "#ff7f0e"))


def _headline_plot(headline, state, out_dir):
    """The headline table as bars: per rule, the clean error and each
    gradient's strongest attack at the dataset's headline eps; one panel per
    architecture. The question it answers at a glance: is a rule robust, or
    only to an attacker who follows its feedback path?"""
    paths = []
    for dataset in dict.fromkeys(headline.dataset):
        part = headline[headline.dataset == dataset]
        archs = _ordered(set(part.arch), ARCH_ORDER)
        labels = _ordered_labels(part.label)
        fig, axes = plt.subplots(len(archs), 1, figsize=(max(8.0, 0.55 * len(labels) + 2), 3.0 * len(archs)),
                                 squeeze=False, sharex=True)
        width = 0.8 / len(HEADLINE_BARS)
        for ax, arch in zip(axes[:, 0], archs):
            for k, (attack, gradient, title, bar_colour) in enumerate(HEADLINE_BARS):
                cell = part[(part.arch == arch) & (part.attack == attack) & (part.gradient == gradient)]
                by_label = {r.label: r for r in cell.itertuples()}
                x = [i + (k - 1.5) * width for i, label in enumerate(labels) if label in by_label]
                found = [by_label[label] for label in labels if label in by_label]
                if not found:
                    continue
                ax.bar(x, [r.mean for r in found], width, color=bar_colour, label=title,
                       yerr=[0 if r.n < 2 else r.std for r in found], capsize=1.5, error_kw={"linewidth": 0.8})
            ax.set_title(f"{arch_title(arch)}", fontsize=10)
            ax.set_ylabel("test error (%)")
            ax.set_ylim(0, 100)
            ax.grid(axis="y", alpha=0.3)
        axes[-1, 0].set_xticks(range(len(labels)))
        axes[-1, 0].set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
        axes[-1, 0].set_xlabel("learning rule")
        eps = part.eps.iloc[0]
        fig.suptitle(f"{DATASET_TITLES.get(dataset, dataset)}, {state} models: clean error and the strongest "
                     f"attack's error at eps {eps:.3g} (L-inf, pixels in [0, 1]), mean ± std over seeds")
        legend_width = 1.7  # inches kept free on the right for the figure legend
        fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 0.95))
        _figure_legend(fig, axes, title="attack follows", loc="upper right", bbox_to_anchor=(1.0, 0.95))
        paths += save(fig, out_dir, f"robustness_headline_{state}_{dataset}")
    return paths


def all_plots(runs, summary, metric, out_dir, searches=(), warn=None):
    """Every plot the records (and searches) allow; returns the file paths.
    ``warn``: told of robustness results left out (:func:`load_robustness`)."""
    return (bar_plot(summary, out_dir, metric) + curve_plot(runs, out_dir) + alignment_plot(runs, out_dir)
            + attention_alignment_plot(runs, out_dir) + target_propagation_plot(runs, out_dir)
            + family_metrics_plot(runs, out_dir) + params_plot(summary, out_dir, metric)
            + search_plot(searches, out_dir) + robustness_plot(runs, out_dir, warn))
