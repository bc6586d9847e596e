"""Results tables, built from run records only (pandas).

Rows are learning rules, columns dataset x architecture (the paper's layout);
a cell is mean +- sample std of the chosen error over seeds, with the number of
seeds, flags for missing seeds / diverged / unfinished runs, and the paper's
number with our difference where the paper has one.
The rows, their labels and orders come from ``benchmark.results``.
"""
import json
import os

import pandas as pd

from .io import write_text
from .results import (
    ARCH_ORDER,
    BIOTORCH_ARCHS,
    DATASET_TITLES,
    GRADIENT_TITLES,
    METRICS,
    OWN_PAPER_RULES,
    RULE_ORDER,
    arch_title,
    label_variants,
    one_per_seed,
)

# Output files keep the column names they were first published with.
OUTPUT_COLUMNS = {"rule": "algo"}
# Datasets whose numbers the paper's columns stand for.
PAPER_DATASET = {"mnist": "mnist", "cifar10": "cifar10", "cifar10-jpeg": "cifar10"}
# The published numbers beside our cells: Bartunov et al.'s for their nets, BioTorch's for the peers' networks,
# Nakajima et al.'s ViT-3 for the vit.
REFERENCE_FILES = ("paper_reference.csv", "biotorch_reference.csv", "families_reference.csv",
                   "transformers_reference.csv")


def paper_reference():
    """``dataset, arch, algo, optimizer, error`` of every published cell
    (``optimizer`` empty where the cell has one number)."""
    folder = os.path.dirname(__file__)
    frames = [pd.read_csv(os.path.join(folder, name), comment="#", keep_default_na=False) for name in REFERENCE_FILES]
    return pd.concat(frames, ignore_index=True).fillna({"optimizer": ""}).astype({"error": float})


def summarize_runs(runs, metric="best", seeds=None, warn=None):
    """Per (dataset, arch, rule label): mean, std, n over complete runs (one
    per seed), plus counts of diverged and unfinished runs and the paper's
    number where the runs are comparable with it."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if runs.empty:
        return pd.DataFrame(columns=["dataset", "arch", "rule", "label", "mean", "std", "n", "diverged",
                                     "unfinished", "expected_seeds", "paper", "diff", "flag"])
    if "label" not in runs:
        runs = label_variants(runs)
    groups, cells = [], []
    for key, cell in runs.groupby(["dataset", "arch", "rule", "label"], sort=False):
        kept, dropped = one_per_seed(cell)
        for _, extra in dropped.iterrows():
            (warn or (lambda m: None))(
                f"seed {extra.seed} of {' '.join(key[:2])} {key[3]} has more than one record; counted "
                f"{kept[kept.seed == extra.seed].iloc[0].path}, not {extra.path}")
        cells.append((key, kept))
    expected_default = seeds or max(kept["seed"].nunique() for _, kept in cells)
    paper = paper_reference()
    for (dataset, arch, rule, label), cell in cells:
        done = cell[(cell["status"] == "complete") & cell[metric].notna()]
        values = done[metric].astype(float)
        mean = values.mean() if len(values) else float("nan")
        std = values.std(ddof=1) if len(values) > 1 else float("nan")
        optimizer = json.loads(cell["setting"].iloc[0]).get("optimizer", "adam")
        ref = paper[(paper.dataset == PAPER_DATASET.get(dataset, dataset)) & (paper.arch == arch)
                    & (paper.algo == rule) & paper.optimizer.isin(["", optimizer])]
        ref_value = float(ref.error.iloc[0]) if len(ref) else float("nan")
        subset = int(cell["train_subset"].max())
        diverged = int((cell["status"] == "diverged").sum())
        unfinished = int((~cell["status"].isin(["complete", "diverged"])).sum())
        flags = []
        if len(values) < expected_default:
            flags.append(f"{len(values)}/{expected_default} seeds")
        if diverged:
            flags.append(f"{diverged} diverged")
        if unfinished:
            flags.append(f"{unfinished} unfinished")
        if metric == "val" and len(done) == 0 and len(cell[cell["status"] == "complete"]):
            flags.append("no validation split")
        groups.append({"dataset": dataset, "arch": arch, "rule": rule, "label": label, "mean": mean, "std": std,
                       "n": len(values), "diverged": diverged, "unfinished": unfinished,
                       "expected_seeds": expected_default, "epochs": int(cell["epochs"].max()),
                       "paper": ref_value,
                       # a run on a subset of the training set is not the paper's kind of run
                       "comparable": subset == 0,
                       "diff": mean - ref_value if subset == 0 else float("nan"),
                       "flag": "; ".join(flags),
                       "forward_params": int(cell["forward_params"].iloc[0]),
                       "feedback_params": int(cell["feedback_params"].iloc[0])})
    table = pd.DataFrame(groups)
    return _ordered(table)


def _ordered(table):
    def rank(order):
        return lambda s: s.map(lambda v: order.index(v) if v in order else len(order))
    table = table.sort_values(["label"], kind="stable")
    table = table.sort_values(["rule"], key=rank(RULE_ORDER), kind="stable")
    table = table.sort_values(["arch"], key=rank(ARCH_ORDER), kind="stable")
    return table.sort_values(["dataset"], kind="stable").reset_index(drop=True)


def _cell_text(row, plus_minus, paper_fmt):
    if row["n"] == 0:
        text = "n/a"
    else:
        std = f" {plus_minus} {row['std']:.2f}" if row["n"] > 1 else ""
        text = f"{row['mean']:.2f}{std} ({row['n']})"
    if row["paper"] == row["paper"]:  # not NaN
        if row["comparable"]:
            text += paper_fmt(row["paper"], row["diff"] if row["n"] else None)
        else:
            text += paper_fmt(row["paper"], None) + " (not comparable: trained on a subset)"
    if row["flag"]:
        text += f" [{row['flag']}]"
    return text


def column_title(dataset, arch):
    return f"{DATASET_TITLES.get(dataset, dataset)} {arch_title(arch)}"


def results_grid(summary, plus_minus, paper_fmt):
    """The results table as text: ``(columns, rows)`` with columns
    ``(dataset, arch)`` in first-seen order and rows ``(label, cells)`` by
    rule (registry order), then label; a missing cell is ``""``."""
    columns = list(dict.fromkeys(zip(summary["dataset"], summary["arch"])))

    def rank(label):
        rule = summary.loc[summary.label == label, "rule"].iloc[0]
        return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), label)
    rows = []
    for label in sorted(set(summary["label"]), key=rank):
        cells = []
        for dataset, arch in columns:
            match = summary[(summary.dataset == dataset) & (summary.arch == arch) & (summary.label == label)]
            cells.append(_cell_text(match.iloc[0], plus_minus, paper_fmt) if len(match) else "")
        rows.append((label, cells))
    return columns, rows


def markdown_paper_text(ref, diff):
    return f"; paper {ref:.2f}" + (f" ({diff:+.2f})" if diff is not None else "")


def footer_text(summary, metric):
    peers = summary["arch"].isin(BIOTORCH_ARCHS)
    vit = summary["arch"] == "vit"
    sources = []
    own = summary["rule"].isin(OWN_PAPER_RULES) & summary["paper"].notna()
    if (~peers & ~own & ~vit).any():
        sources.append("Bartunov et al. 2018 Table 1 (500 epochs, tuned)")
    if own.any():
        sources.append(("for PEPITA and Forward-Forward " if sources else "") + "the authors' own MNIST numbers on "
                       "their nets (PEPITA: 1x1024 ReLU, 100 epochs; FF: 4x2000 ReLU, 60 epochs; see "
                       "benchmark/families_reference.csv)")
    if peers.any():
        sources.append(("for LeNet and the ResNets " if sources else "")
                       + "BioTorch's published benchmark (Sanfiz & Akrout 2021; one run, the best-validation model; "
                       "100 epochs on MNIST and Fashion-MNIST, 250 on CIFAR-10)")
    if (vit & summary["paper"].notna()).any():
        sources.append(("for the ViT " if sources else "") + "Nakajima et al. 2022 (Nat. Commun., Table 2): their "
                       "ViT-3, another network; their CIFAR-10 DFA is marked (DFA+BP); see "
                       "benchmark/transformers_reference.csv")
    paper = (f"; 'paper' is {', and '.join(sources)} and the difference ours - paper" if sources else
             "; no published number for these cells")
    return (f"Test error (%), {METRICS[metric][1]}: mean ± sample std over seeds (number of complete "
            f"seeds, each seed counted once); a rule's rows with settings in brackets differ in those "
            f"settings and are never averaged together{paper}. Epochs here: {_epochs_text(summary)}.")


def to_markdown(summary, metric="best"):
    columns, rows = results_grid(summary, "±", markdown_paper_text)
    lines = ["| rule | " + " | ".join(column_title(d, a) for d, a in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    lines += ["", footer_text(summary, metric)]
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
    # A placeholder survives escaping; the real macro would not.
    columns, rows = results_grid(summary, "PLUSMINUS", paper_fmt)
    lines = [r"% Generated by biobench (cli.py table); requires \usepackage{booktabs}.",
             r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
             "rule & " + " & ".join(latex_escape(column_title(d, a)) for d, a in columns) + r" \\", r"\midrule"]
    for label, cells in rows:
        cells = [latex_escape(c).replace("PLUSMINUS", r"$\pm$") for c in cells]
        lines.append(latex_escape(label) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(summary):
    return summary.rename(columns=OUTPUT_COLUMNS).to_csv(index=False, float_format="%.4f")


def table_text(summary, metric, fmt):
    """The results table in ``fmt`` (markdown, csv or latex)."""
    if fmt == "csv":
        return to_csv(summary)
    return (to_latex if fmt == "latex" else to_markdown)(summary, metric)


def write_tables(summary, metric, out, suffix=""):
    """``table_METRIC{suffix}.{md,csv,tex}`` and ``params.{md,csv,tex}`` into the folder ``out``."""
    for ext, fmt in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        write_text(os.path.join(out, f"table_{metric}{suffix}.{ext}"), table_text(summary, metric, fmt))
    params = parameter_table(summary)
    write_text(os.path.join(out, "params.md"), parameters_markdown(params))
    write_text(os.path.join(out, "params.csv"), parameters_csv(params))
    write_text(os.path.join(out, "params.tex"), parameters_latex(params))


def write_chosen(chosen, out):
    """``chosen.{md,csv,tex}`` (the settings searches chose) into the folder ``out``."""
    write_text(os.path.join(out, "chosen.md"), chosen_markdown(chosen))
    write_text(os.path.join(out, "chosen.csv"), chosen_csv(chosen))
    write_text(os.path.join(out, "chosen.tex"), chosen_latex(chosen))


def parameters_csv(table):
    return table.rename(columns=OUTPUT_COLUMNS).to_csv(index=False)


def chosen_csv(table):
    return table.rename(columns=OUTPUT_COLUMNS).to_csv(index=False)


def parameter_table(summary):
    table = summary[["dataset", "arch", "label", "forward_params", "feedback_params"]].rename(
        columns={"label": "rule"}).drop_duplicates()
    return table.reset_index(drop=True)


def parameters_markdown(table):
    lines = ["| dataset | arch | rule | forward parameters | feedback weights |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {DATASET_TITLES.get(r.dataset, r.dataset)} | {r.arch} | {r.rule} | "
                     f"{r.forward_params:,} | {r.feedback_params:,} |")
    return "\n".join(lines) + "\n"


def parameters_latex(table):
    lines = [r"\begin{tabular}{lllrr}", r"\toprule",
             r"dataset & arch & rule & forward parameters & feedback weights \\", r"\midrule"]
    for _, r in table.iterrows():
        lines.append(f"{latex_escape(DATASET_TITLES.get(r.dataset, r.dataset))} & {r.arch} & {r.rule} & "
                     f"{r.forward_params:,} & {r.feedback_params:,} \\\\".replace(",", "{,}"))
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def chosen_table(searches):
    """The settings each search chose (like Bartunov et al.'s Table 5)."""
    rows = []
    for record in searches:
        chosen = record.get("chosen")
        if not chosen:
            continue
        settings = chosen["settings"]
        rule_settings = {k: v for k, v in settings.items() if k not in ("lr", "beta2", "eps")}
        rows.append({"dataset": record["dataset"], "arch": record["arch"], "rule": record["algo"],
                     "trials": len(record["trials"]), "epochs": record["epochs"],
                     "halving": record.get("halving") or 0,
                     "lr": settings.get("lr", record["base"].get("lr")),
                     "beta2": settings.get("beta2", record["base"].get("beta2")),
                     "eps": settings.get("eps", record["base"].get("eps")),
                     "rule_settings": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in sorted(rule_settings.items())),
                     "best_val_error": chosen["best_val_error"], "trial": chosen["trial"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return _ordered(table.assign(label=table["rule"])).drop(columns="label")


CHOSEN_COLUMNS = [("dataset", "dataset"), ("arch", "arch"), ("rule", "rule"), ("trials", "trials"),
                  ("epochs", "epochs"), ("lr", "lr"), ("beta2", "beta2"), ("eps", "eps"),
                  ("rule_settings", "rule settings"), ("best_val_error", "val error (%)"),
                  ("trial", "chosen trial")]


def chosen_cells(row):
    """One chosen-settings row as text, in ``CHOSEN_COLUMNS`` order."""
    return [DATASET_TITLES.get(row.dataset, row.dataset) if key == "dataset" else
            f"{row[key]:.3g}" if key in ("lr", "eps") else
            f"{row[key]:.2f}" if key == "best_val_error" else str(row[key]) for key, _ in CHOSEN_COLUMNS]


def chosen_markdown(table):
    lines = ["| " + " | ".join(title for _, title in CHOSEN_COLUMNS) + " |",
             "|" + "---|" * len(CHOSEN_COLUMNS)]
    lines += ["| " + " | ".join(chosen_cells(row)) + " |" for _, row in table.iterrows()]
    lines.append("")
    lines.append("Settings chosen by random search on the validation split (lowest validation error over "
                 "epochs); the test set played no part.")
    return "\n".join(lines) + "\n"


def chosen_latex(table):
    lines = [r"\begin{tabular}{" + "l" * len(CHOSEN_COLUMNS) + "}", r"\toprule",
             " & ".join(latex_escape(title) for _, title in CHOSEN_COLUMNS) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in chosen_cells(row)) + r" \\" for _, row in table.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# robustness (cli.py robustness writes robustness.json into each run folder) ----------------------------
ROBUST_METRICS = {"robust": "final", "robust-best": "best"}
CORRUPTION_TITLES = {"gaussian_noise": "noise", "gaussian_blur": "blur", "contrast": "contrast"}


def _robust_cell(match):
    if not len(match):
        return ""
    r = match.iloc[0]
    return f"{r['mean']:.1f}" + (f" ± {r['std']:.1f}" if r["n"] > 1 else "") + f" ({r['n']})"


def _robust_block(part, columns, column_key, title):
    def rank(label):
        rule = label.split(" ")[0]
        return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), label)
    rows = [(label, [_robust_cell(part[(part.label == label) & column_key(key)]) for key, _ in columns])
            for label in sorted(set(part.label), key=rank)]
    return {"title": title, "columns": [text for _, text in columns], "rows": rows}


ROBUSTNESS_FOOTER = ("Mean ± sample std over seeds (number of seeds); L-inf eps in pixel units [0, 1], eps 0 being the "
                     "clean error on the same test images; the rule-gradient tables have no row for rules without a "
                     "backward path of their own: bp and pc send the error down through W (their rule gradient is "
                     "the true one), target propagation, PEPITA and FF send no error down between layers.")


def robustness_blocks(summary, state="final"):
    """``[(heading, [block])]`` per dataset; a block is a table (``title``,
    ``columns``, ``rows`` of ``(label, cells)``): one per (attack, gradient),
    rows rules, columns architecture x eps; one of corruptions, each the
    mean error over its severities."""
    out = []
    for dataset in dict.fromkeys(summary.dataset):
        data = summary[summary.dataset == dataset]
        archs = _robust_order(set(data.arch), ARCH_ORDER)
        blocks = []
        headline = data[data.kind == "headline"]
        attack_names = ", ".join(a.upper() for a in dict.fromkeys(data[data.kind == "attack"].attack))
        if not headline.empty:
            kinds = [("clean", "")] + [("strongest", g) for g in GRADIENT_TITLES if g in set(headline.gradient)]
            columns = [((a, kind), f"{arch_title(a)} {kind[1] or 'clean'}") for a in archs for kind in kinds]
            blocks.append(_robust_block(
                headline, columns,
                lambda key, p=headline: (p.arch == key[0]) & (p.attack == key[1][0]) & (p.gradient == key[1][1]),
                f"Headline at ε={headline.eps.iloc[0]:.3g}: clean error, and per gradient the strongest attack's "
                f"error (the largest over {attack_names} in each run) (%)"))
        attacks = data[data.kind == "attack"]
        for (attack, gradient), part in attacks.groupby(["attack", "gradient"], sort=False):
            eps_values = sorted(set(part.eps))
            columns = [((a, e), f"{arch_title(a)} ε={e:.3g}") for a in archs for e in eps_values]
            blocks.append(_robust_block(part, columns, lambda key, p=part: (p.arch == key[0]) & (p.eps == key[1]),
                                        f"{attack.upper()}, {GRADIENT_TITLES.get(gradient, gradient)}: "
                                        f"test error (%)"))
        means = data[(data.kind == "corruption") & (data.eps == 0)]
        if not means.empty:
            names = list(dict.fromkeys(means.attack))
            columns = [((a, c), f"{arch_title(a)} {CORRUPTION_TITLES.get(c, c)}") for a in archs for c in names]
            blocks.append(_robust_block(means, columns,
                                        lambda key, p=means: (p.arch == key[0]) & (p.attack == key[1]),
                                        "Corruptions: test error (%), mean over severities 1-5"))
        out.append((f"{DATASET_TITLES.get(dataset, dataset)}: {state} models", blocks))
    return out


def robustness_markdown(summary, state="final"):
    """The robustness tables (:func:`robustness_blocks`) as Markdown."""
    if summary.empty:
        return "No robustness results (run: python cli.py robustness --runs DIR).\n"
    lines = []
    for heading, blocks in robustness_blocks(summary, state):
        lines += [f"### {heading}", ""]
        for block in blocks:
            lines += [f"**{block['title']}**", "", "| rule | " + " | ".join(block["columns"]) + " |",
                      "|---|" + "---|" * len(block["columns"])]
            lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in block["rows"]]
            lines.append("")
    lines.append(ROBUSTNESS_FOOTER)
    return "\n".join(lines) + "\n"


def robustness_latex(summary, state="final"):
    """The robustness tables (:func:`robustness_blocks`) as LaTeX: per dataset
    a paragraph, per block its title and a booktabs tabular with the
    Markdown tables' cells."""
    def tex(text):  # ε and ± as math: pdflatex reads them without extra packages
        return latex_escape(text).replace("ε", r"$\varepsilon$").replace("±", r"$\pm$")
    if summary.empty:
        return "% No robustness results (run: python cli.py robustness --runs DIR).\n"
    lines = [r"% Generated by biobench (cli.py table --metric robust); requires \usepackage{booktabs}.", ""]
    for heading, blocks in robustness_blocks(summary, state):
        lines += [rf"\paragraph{{{tex(heading)}}}", ""]
        for block in blocks:
            lines += [rf"\textbf{{{tex(block['title'])}}}", "",
                      r"\begin{tabular}{l" + "c" * len(block["columns"]) + "}", r"\toprule",
                      "rule & " + " & ".join(tex(c) for c in block["columns"]) + r" \\", r"\midrule"]
            lines += [tex(label) + " & " + " & ".join(tex(c) for c in cells) + r" \\" for label, cells in block["rows"]]
            lines += [r"\bottomrule", r"\end{tabular}", ""]
    lines.append(tex(ROBUSTNESS_FOOTER))
    return "\n".join(lines) + "\n"


def robustness_csv(summary):
    return summary.rename(columns=OUTPUT_COLUMNS).to_csv(index=False, float_format="%.4f")


def robustness_text(summary, state, fmt):
    """The robustness tables of the ``state`` models in ``fmt`` (markdown, csv or latex)."""
    if fmt == "csv":
        return robustness_csv(summary)
    return (robustness_latex if fmt == "latex" else robustness_markdown)(summary, state)


def write_robustness_tables(summary, state, out):
    """``robustness_STATE.{md,csv,tex}`` into the folder ``out``, as every
    other metric's tables."""
    write_text(os.path.join(out, f"robustness_{state}.md"), robustness_markdown(summary, state))
    write_text(os.path.join(out, f"robustness_{state}.csv"), robustness_csv(summary))
    write_text(os.path.join(out, f"robustness_{state}.tex"), robustness_latex(summary, state))


def _robust_order(values, order):
    return [v for v in order if v in values] + sorted(set(values) - set(order))
