"""A grid's progress in core-hours: what each cell has cost and what is left.

The Table 1 campaign runs for days on two cores; its folder README keeps
this table (``grid --status DIR`` with the grid's selection prints it).
"""
import dataclasses
import json
import os
from collections import OrderedDict

from .records import read_record
from .results import variant_label, varying_keys


def _group_key(cell):
    """A cell's seeds share this: its config without the seed (the run
    name's hash covers the seed)."""
    return json.dumps(dict(dataclasses.asdict(cell), seed=None), sort_keys=True, default=str)


def variant_labels(cells):
    """``{group key: label}``: the rule's name, plus the settings that tell
    apart its groups on one dataset and architecture (``dfa
    (placement=block)``, ``bp (weight_decay=0.0001)``); rule options count
    with their defaults filled in."""
    from models import RULES
    settings = OrderedDict()
    for cell in cells:
        fields = dataclasses.asdict(cell)
        fields.update(RULES.get(cell.rule).defaults, **fields.pop("rule_options"))
        del fields["seed"]
        settings[_group_key(cell)] = fields
    labels = {}
    for key, fields in settings.items():
        peers = [f for f in settings.values()
                 if (f["rule"], f["dataset"], f["arch"]) == (fields["rule"], fields["dataset"], fields["arch"])]
        labels[key] = variant_label(fields["rule"], fields, varying_keys(peers))
    return labels


def _core_seconds(record):
    """Wall time times the torch threads it used (one record = one run)."""
    threads = (record.get("host") or {}).get("torch_threads") or 1
    return float(record.get("wall_seconds") or 0.0) * threads


def _seconds_per_epoch(record):
    done = record["summary"].get("epochs_done", 0) if record else 0
    return _core_seconds(record) / done if done else None


def cell_records(out, cells):
    """``{run name: record or None}`` of ``cells`` under ``out``, read once for both tables."""
    return {cell.run_name(): read_record(os.path.join(out, cell.run_name())) for cell in cells}


def campaign_rows(records, cells, statuses):
    """One row per (dataset, arch, rule, settings) group of ``cells``: seeds
    done / running / to do, core-hours spent, and core-hours still to go
    (remaining epochs at the group's measured cost per epoch; None while no
    seed of the group has finished an epoch). ``statuses`` is
    ``grid_status``'s ``{status: [run names]}``."""
    status_of = {name: status for status, names in statuses.items() for name in names}
    labels = variant_labels(cells)
    groups = OrderedDict()
    for cell in cells:
        key = (cell.dataset, cell.arch, labels[_group_key(cell)], _group_key(cell))
        groups.setdefault(key, []).append(cell)
    rates = {key: [r for r in (_seconds_per_epoch(records[c.run_name()]) for c in group) if r]
             for key, group in groups.items()}
    kinds = {key: _family_and_schedule(group[0].rule) for key, group in groups.items()}
    rows = []
    for key, group in groups.items():
        dataset, arch, rule, _ = key
        row_rates = rates[key]
        # No seed trained yet: the rate of its family's rules of the same
        # schedule on the same net (the TP variants' epochs cost alike).
        borrowed = not row_rates
        if borrowed:
            row_rates = [r for other, group_rates in rates.items() for r in group_rates
                         if other[:2] == (dataset, arch) and kinds[other] == kinds[key]]
        rate = sum(row_rates) / len(row_rates) if row_rates else None
        spent, to_go, counts = 0.0, 0.0, {"done": 0, "running": 0, "to do": 0}
        for cell in group:
            record = records[cell.run_name()]
            status = status_of.get(cell.run_name(), "missing")
            kind = "done" if status in ("complete", "diverged") else "running" if status == "running" else "to do"
            counts[kind] += 1
            if record:
                spent += _core_seconds(record)
            if kind != "done":
                left = cell.epochs - (record["summary"].get("epochs_done", 0) if record else 0)
                own = _seconds_per_epoch(record)
                to_go = None if to_go is None or (own or rate) is None else to_go + left * (own or rate)
        rows.append({"dataset": dataset, "arch": arch, "rule": rule, **counts, "core_hours": spent / 3600,
                     "core_hours_to_go": None if to_go is None else to_go / 3600,
                     "borrowed": borrowed and bool(to_go)})
    return rows


def _family_and_schedule(rule):
    """A rule's family (its module: one family a module, ``models/rules/``) and schedule."""
    from models import RULES
    cls = RULES.get(rule)
    return cls.__module__, cls.schedule


def campaign_markdown(rows):
    """The state table the campaign's folder README keeps."""
    lines = ["| dataset | arch | rule | seeds done | running | to do | core-hours spent | core-hours to go |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        to_go = ("?" if row["core_hours_to_go"] is None else
                 ("~" if row.get("borrowed") else "") + f"{row['core_hours_to_go']:.2f}")
        lines.append(f"| {row['dataset']} | {row['arch']} | {row['rule']} | {row['done']} | {row['running']} | "
                     f"{row['to do']} | {row['core_hours']:.2f} | {to_go} |")
    known = [r["core_hours_to_go"] for r in rows]
    total_to_go = ("?" if None in known else
                   ("~" if any(r.get("borrowed") for r in rows) else "") + f"{sum(known):.1f}")
    lines.append(f"| **total** | | | {sum(r['done'] for r in rows)} | {sum(r['running'] for r in rows)} | "
                 f"{sum(r['to do'] for r in rows)} | {sum(r['core_hours'] for r in rows):.1f} | {total_to_go} |")
    if any(r.get("borrowed") for r in rows):
        lines += ["", "~: no seed of the row has trained an epoch; costed at its family's rows of the same "
                      "schedule on the same net. ?: no such row either."]
    return "\n".join(lines)


# A run "still falling" improved its best validation error within this many
# final epochs (a quarter of a shorter run, where 10 would be all of it):
# more epochs would likely lower its number.
RECENT_EPOCHS = 10


def recent_epochs(epochs_done):
    return max(1, min(RECENT_EPOCHS, epochs_done // 4))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def convergence_rows(records, cells):
    """Per (dataset, arch, rule, settings) group, over its complete seeds: where the
    validation error bottomed out, how many seeds still improved in their
    last ``recent_epochs`` epochs, the final train error (near 0: the net fits
    the data, the gap is generalisation; well above 0: underfitting), and
    the test error at the best-validation epoch, at its best and at the end,
    with the paper's number."""
    from .tables import PAPER_DATASET, paper_reference
    reference = paper_reference()
    labels = variant_labels(cells)
    groups = OrderedDict()
    for cell in cells:
        record = records[cell.run_name()]
        key = (cell.dataset, cell.arch, cell.rule, labels[_group_key(cell)])
        groups.setdefault(key, [])
        if record and record["status"] == "complete":
            groups[key].append(record)
    rows = []
    for (dataset, arch, rule, label), records in groups.items():
        summaries = [r["summary"] for r in records]
        paper = reference[(reference.dataset == PAPER_DATASET.get(dataset, dataset)) & (reference.arch == arch)
                          & (reference.algo == rule) & (reference.optimizer == "")]
        rows.append({
            "dataset": dataset, "arch": arch, "rule": label, "seeds": len(records),
            "epochs": sorted({s["epochs_done"] for s in summaries}),
            "best_val_epochs": [s["best_val_epoch"] for s in summaries],
            "still_falling": sum(1 for s in summaries
                                 if s["best_val_epoch"]
                                 and s["best_val_epoch"] > s["epochs_done"] - recent_epochs(s["epochs_done"])),
            "final_train_error": _mean([s["final_train_error"] for s in summaries]),
            "test_at_best_val": _mean([s["test_error_at_best_val"] for s in summaries]),
            "best_test": _mean([s["best_test_error"] for s in summaries]),
            "final_test": _mean([s["final_test_error"] for s in summaries]),
            "paper": float(paper.error.iloc[0]) if len(paper) else None})
    return rows


def convergence_markdown(rows):
    def number(value):
        return "-" if value is None else f"{value:.2f}"
    lines = ["| dataset | arch | rule | seeds | epochs | best-val epoch per seed | still improving in the last "
             f"{RECENT_EPOCHS} epochs (a quarter of shorter runs) | final train error | test error at best val | "
             "best test error | final test error | paper | best - paper |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["seeds"]:
            continue
        gap = None if row["paper"] is None else row["best_test"] - row["paper"]
        lines.append(
            f"| {row['dataset']} | {row['arch']} | {row['rule']} | {row['seeds']} | "
            f"{', '.join(map(str, row['epochs']))} | {', '.join(map(str, row['best_val_epochs']))} | "
            f"{row['still_falling']}/{row['seeds']} | {number(row['final_train_error'])} | "
            f"{number(row['test_at_best_val'])} | {number(row['best_test'])} | {number(row['final_test'])} | "
            f"{number(row['paper'])} | {'-' if gap is None else f'{gap:+.2f}'} |")
    return "\n".join(lines)
