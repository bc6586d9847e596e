"""Results tables, built from run records only (pandas).

Rows are learning rules, columns dataset x architecture (the paper's layout);
a cell is mean +- sample std of the chosen error over seeds, with the number of
seeds, flags for missing seeds / diverged / unfinished runs, and the paper's
number with our difference where the paper has one.
"""
import os
import warnings

import pandas as pd

from models import RULES

from .records import RecordError, find_records, load_record

METRICS = {
    "best": ("best_test_error", "best test error over epochs (the paper's protocol)"),
    "final": ("final_test_error", "test error after the last epoch"),
    "val": ("test_error_at_best_val", "test error at the epoch of best validation error"),
}
RULE_ORDER = RULES.registered()
ARCH_ORDER = ["fc", "lc", "conv"]
# Datasets whose numbers the paper's columns stand for.
PAPER_DATASET = {"mnist": "mnist", "cifar10": "cifar10", "cifar10-jpeg": "cifar10"}
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "cifar10-jpeg": "CIFAR-10 (JPEG q75)", "imagefolder": "ImageFolder"}


def paper_reference():
    path = os.path.join(os.path.dirname(__file__), "paper_reference.csv")
    return pd.read_csv(path, comment="#")


def load_runs(roots, strict=False, warn=None):
    """One row per record under ``roots``. Bad files are reported (by path)
    and skipped; with ``strict`` the first one raises RecordError."""
    warn = warn or (lambda msg: warnings.warn(msg))
    rows, bad = [], []
    for root in roots:
        for path in find_records(root):
            try:
                record = load_record(path)
                rows.append(_row(record, path))
            except (RecordError, KeyError, TypeError) as exc:
                message = str(exc) if isinstance(exc, RecordError) else f"{path}: malformed record ({exc!r})"
                if strict:
                    raise RecordError(message) from None
                bad.append(message)
                warn(f"skipped {message}")
    return pd.DataFrame(rows), bad


def _row(record, path):
    cfg, summary = record["config"], record["summary"]
    row = {"dataset": cfg["dataset"], "arch": cfg["arch"], "algo": cfg["algo"], "seed": cfg["seed"],
           "status": record["status"], "epochs": cfg["epochs"], "epochs_done": summary.get("epochs_done", 0),
           "forward_params": record["params"]["forward_total"],
           "feedback_params": record["params"]["feedback_total"], "path": path,
           "seconds_per_epoch": _mean(record["curves"].get("seconds", []))}
    for key, (field, _) in METRICS.items():
        row[key] = summary.get(field)
    return row


def _mean(values):
    return sum(values) / len(values) if values else None


def summarize(runs, metric="best", seeds=None):
    """Per (dataset, arch, algo): mean, std, n over complete runs, plus counts of
    diverged and unfinished runs and the paper's number."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if runs.empty:
        return pd.DataFrame(columns=["dataset", "arch", "algo", "mean", "std", "n", "diverged", "unfinished",
                                     "expected_seeds", "paper", "diff", "flag"])
    groups = []
    expected_default = seeds or runs.groupby(["dataset", "arch", "algo"])["seed"].nunique().max()
    paper = paper_reference()
    for (dataset, arch, algo), cell in runs.groupby(["dataset", "arch", "algo"], sort=False):
        done = cell[(cell["status"] == "complete") & cell[metric].notna()]
        values = done[metric].astype(float)
        mean = values.mean() if len(values) else float("nan")
        std = values.std(ddof=1) if len(values) > 1 else float("nan")
        ref = paper[(paper.dataset == PAPER_DATASET.get(dataset, dataset)) & (paper.arch == arch)
                    & (paper.algo == algo)]
        ref_value = float(ref.error.iloc[0]) if len(ref) else float("nan")
        diverged = int((cell["status"] == "diverged").sum())
        unfinished = int((~cell["status"].isin(["complete", "diverged"])).sum())
        flags = []
        if len(values) < expected_default:
            flags.append(f"{len(values)}/{expected_default} seeds")
        if diverged:
            flags.append(f"{diverged} diverged")
        if unfinished:
            flags.append(f"{unfinished} unfinished")
        groups.append({"dataset": dataset, "arch": arch, "algo": algo, "mean": mean, "std": std,
                       "n": len(values), "diverged": diverged, "unfinished": unfinished,
                       "expected_seeds": expected_default, "epochs": int(cell["epochs"].max()),
                       "paper": ref_value, "diff": mean - ref_value, "flag": "; ".join(flags),
                       "forward_params": int(cell["forward_params"].iloc[0]),
                       "feedback_params": int(cell["feedback_params"].iloc[0])})
    table = pd.DataFrame(groups)
    return _ordered(table)


def _ordered(table):
    def rank(order):
        return lambda s: s.map(lambda v: order.index(v) if v in order else len(order))
    table = table.sort_values(["algo"], key=rank(RULE_ORDER), kind="stable")
    table = table.sort_values(["arch"], key=rank(ARCH_ORDER), kind="stable")
    return table.sort_values(["dataset"], kind="stable").reset_index(drop=True)


def _cell_text(row, plus_minus, paper_fmt):
    if row["n"] == 0:
        text = "n/a"
    else:
        std = f" {plus_minus} {row['std']:.2f}" if row["n"] > 1 else ""
        text = f"{row['mean']:.2f}{std} ({row['n']})"
    if row["paper"] == row["paper"]:  # not NaN
        text += paper_fmt(row["paper"], row["diff"] if row["n"] else None)
    if row["flag"]:
        text += f" [{row['flag']}]"
    return text


def _columns(summary):
    cols = []
    for _, row in summary.iterrows():
        key = (row["dataset"], row["arch"])
        if key not in cols:
            cols.append(key)
    return cols


def _rules(summary):
    return [a for a in RULE_ORDER if a in set(summary["algo"])] + \
        sorted(set(summary["algo"]) - set(RULE_ORDER))


def to_markdown(summary, metric="best"):
    def paper_fmt(ref, diff):
        return f"; paper {ref:.2f}" + (f" ({diff:+.2f})" if diff is not None else "")
    cols, rules = _columns(summary), _rules(summary)
    header = "| rule | " + " | ".join(f"{DATASET_TITLES.get(d, d)} {a.upper()}" for d, a in cols) + " |"
    lines = [header, "|---|" + "---|" * len(cols)]
    for algo in rules:
        cells = []
        for d, a in cols:
            match = summary[(summary.dataset == d) & (summary.arch == a) & (summary.algo == algo)]
            cells.append(_cell_text(match.iloc[0], "±", paper_fmt) if len(match) else "")
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Test error (%), {METRICS[metric][1]}: mean ± sample std over seeds (number of complete "
                 f"seeds); 'paper' is Bartunov et al. 2018 Table 1 (500 epochs, tuned) and the difference "
                 f"ours - paper. Epochs here: {_epochs_text(summary)}.")
    return "\n".join(lines) + "\n"


def _epochs_text(summary):
    epochs = sorted(set(int(e) for e in summary["epochs"]))
    return ", ".join(map(str, epochs))


def latex_escape(text):
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_latex(summary, metric="best"):
    def paper_fmt(ref, diff):
        return f" / {ref:.2f}" + (f" ({diff:+.2f})" if diff is not None else "")
    cols, rules = _columns(summary), _rules(summary)
    lines = [r"% Generated by biobench (cli.py table); requires \usepackage{booktabs}.",
             r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
             "rule & " + " & ".join(latex_escape(f"{DATASET_TITLES.get(d, d)} {a.upper()}") for d, a in cols)
             + r" \\", r"\midrule"]
    for algo in rules:
        cells = []
        for d, a in cols:
            match = summary[(summary.dataset == d) & (summary.arch == a) & (summary.algo == algo)]
            cells.append(latex_escape(_cell_text(match.iloc[0], "PLUSMINUS", paper_fmt)).replace(
                "PLUSMINUS", r"$\pm$") if len(match) else "")
        lines.append(latex_escape(algo.upper()) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(summary):
    return summary.to_csv(index=False, float_format="%.4f")


def parameter_table(summary):
    table = summary[["dataset", "arch", "algo", "forward_params", "feedback_params"]].copy()
    return table.reset_index(drop=True)


def parameters_markdown(table):
    lines = ["| dataset | arch | rule | forward parameters | feedback weights |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {DATASET_TITLES.get(r.dataset, r.dataset)} | {r.arch} | {r.algo} | "
                     f"{r.forward_params:,} | {r.feedback_params:,} |")
    return "\n".join(lines) + "\n"


def parameters_latex(table):
    lines = [r"\begin{tabular}{lllrr}", r"\toprule",
             r"dataset & arch & rule & forward parameters & feedback weights \\", r"\midrule"]
    for _, r in table.iterrows():
        lines.append(f"{latex_escape(DATASET_TITLES.get(r.dataset, r.dataset))} & {r.arch} & {r.algo} & "
                     f"{r.forward_params:,} & {r.feedback_params:,} \\\\".replace(",", "{,}"))
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
