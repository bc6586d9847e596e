"""``cli.py report``: one self-contained HTML page from a results folder:
the results table with the paper's numbers, the parameter table, every plot
(inlined as PNG data), the chosen settings of searches, the runs that did not
finish, and where the runs come from (devices, versions, code, commands).
Rendered with Jinja2, which escapes every value."""
import base64
import json
import os
import tempfile
from datetime import datetime, timezone

import jinja2

from . import __version__, plots, tables
from .config import RunConfig
from .records import load_record
from .results import ARCH_ORDER, DATASET_TITLES, RULE_ORDER, load_robustness, robustness_summary


def _flag(key, value, default):
    if value == default:
        return []
    if key == "augment":
        return ["--augment" if value else "--no-augment"]
    if key == "rule_options":
        return [f"--rule-opt {k}={v}" for k, v in sorted(value.items())]
    if isinstance(value, list):
        return [f"--{key.replace('_', '-')} {','.join(f'{v:g}' for v in value)}"]
    flag = f"--{key.replace('_', '-')}"
    return [f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"]


def _in_order(values, order):
    return [v for v in order if v in set(values)] + sorted(set(values) - set(order))


def commands(runs):
    """``grid`` commands reproducing the runs: one per distinct setting and
    set of (dataset, arch) cells its rules ran on."""
    defaults = RunConfig().as_record()
    lines = []
    for setting, group in runs.groupby("setting", sort=False):
        config = json.loads(setting)
        flags = []
        for key, value in sorted(config.items()):
            if key != "epochs":
                flags += _flag(key, value, defaults.get(key))
        by_cells = {}
        for rule, part in group.groupby("rule"):
            cells = tuple(sorted(set(zip(part.dataset, part.arch))))
            seeds = tuple(sorted(set(int(s) for s in part.seed)))
            by_cells.setdefault((cells, seeds), []).append(rule)
        for (cells, seeds), rules in by_cells.items():
            seed_flag = f"--seeds {len(seeds)}" if list(seeds) == list(range(len(seeds))) else f"(seeds {list(seeds)})"
            lines.append(" ".join([
                "python cli.py grid", f"--datasets {','.join(dict.fromkeys(d for d, _ in cells))}",
                f"--archs {','.join(_in_order([a for _, a in cells], ARCH_ORDER))}",
                f"--algos {','.join(_in_order(rules, RULE_ORDER))}", seed_flag,
                f"--epochs {config['epochs']}", *flags, "--data-dir DATA", "--out OUT"]))
    return lines


def _provenance(runs):
    devices, versions, code = set(), set(), set()
    for path in runs.path:
        record = load_record(path)
        devices.add(record.get("device", "?"))
        v = record.get("versions", {})
        versions.add(", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "numpy") if k in v))
        c = record.get("code") or {}
        code.add(f"biobench {c.get('biobench_version', v.get('biobench', '?'))}"
                 + (f", git {c['git_commit'][:10]}" + (" (uncommitted changes)" if c.get("git_dirty") else "")
                    if c.get("git_commit") else ", git commit not recorded"))
    return sorted(devices), sorted(versions), sorted(code)


def _plots(runs, summary, metric, searches):
    with tempfile.TemporaryDirectory() as folder:
        paths = plots.all_plots(runs, summary, metric, folder, searches)
        found = []
        for path in paths:
            if path.endswith(".png"):
                with open(path, "rb") as handle:
                    found.append({"name": os.path.basename(path)[:-4].replace("_", " "),
                                  "data": base64.b64encode(handle.read()).decode("ascii")})
        return found


def render(runs, summary, metric, searches, title, warn=None):
    columns, rows = tables.results_grid(summary, "±", tables.markdown_paper_text)
    results = [{"label": label, "cells": cells} for label, cells in rows]
    params = [{"dataset": DATASET_TITLES.get(r.dataset, r.dataset), "arch": r.arch, "rule": r.rule,
               "forward": f"{r.forward_params:,}", "feedback": f"{r.feedback_params:,}"}
              for _, r in tables.parameter_table(summary).iterrows()]
    chosen = tables.chosen_table(searches)
    problems = [{"status": r.status, "run": os.path.basename(os.path.dirname(r.path)), "epochs": r.epochs_done,
                 "path": r.path} for _, r in runs[runs.status != "complete"].iterrows()]
    robust = load_robustness(runs, warn)
    robustness = [(heading, blocks) for state in ("final", "best")
                  for heading, blocks in tables.robustness_blocks(robustness_summary(robust, state), state)]
    devices, versions, code = _provenance(runs)
    environment = jinja2.Environment(loader=jinja2.PackageLoader("benchmark", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.get_template("report.html.j2").render(
        title=title, runs_count=len(runs), version=__version__,
        made_at=datetime.now(timezone.utc).isoformat(timespec="minutes"),
        metric_text=tables.footer_text(summary, metric),
        columns=[tables.column_title(d, a) for d, a in columns], results=results,
        params=params, chosen=[tables.chosen_cells(row) for _, row in chosen.iterrows()] if not chosen.empty else [],
        chosen_titles=[title for _, title in tables.CHOSEN_COLUMNS], plots=_plots(runs, summary, metric, searches),
        problems=problems, robustness=robustness, robustness_note=tables.ROBUSTNESS_FOOTER,
        devices=devices, versions=versions, code=code, commands=commands(runs))
