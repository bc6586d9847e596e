"""Results as tables of rows, read from records, and the labels and orders
every view of them uses: ``tables`` and ``plots`` both build on this module
(pandas, no torch)."""
import json
import os
import warnings

import pandas as pd

from models import RULES

from .errors import RecordError
from .records import LATER_FIELDS, find_records, load_record, read_robustness, summarize_curves

METRICS = {
    "best": ("best_test_error", "best test error over epochs (the paper's protocol)"),
    "final": ("final_test_error", "test error after the last epoch"),
    "val": ("test_error_at_best_val", "test error at the epoch of best validation error"),
}
RULE_ORDER = RULES.registered(plugins=False)  # built-ins in registry order; others after, by name
ARCH_ORDER = ["fc", "lc", "conv"]
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "cifar10-jpeg": "CIFAR-10 (JPEG q75)", "imagefolder": "ImageFolder"}
ARCH_TITLES = {"lenet": "LeNet", "resnet20": "ResNet-20", "resnet56": "ResNet-56", "vit": "ViT"}
# The parts of a transformer block whose alignment records keep, in block order.
PART_TITLES = {"q": "Q", "k": "K", "v": "V", "out": "attention output", "mlp_in": "MLP in", "mlp_out": "MLP out"}
GRADIENT_TITLES = {"true": "true gradient", "rule": "rule gradient", "transfer": "transfer from BP"}
# Rules whose reference number is their own paper's, on the authors' nets (families_reference.csv).
OWN_PAPER_RULES = ("pepita", "ff")
# Networks whose reference number is BioTorch's (biotorch_reference.csv).
BIOTORCH_ARCHS = ("lenet", "resnet20", "resnet56")


def arch_title(arch):
    """How an architecture is written in tables and plots: FC, LC, CONV, LeNet, ResNet-20, ViT, torchvision:resnet18."""
    return ARCH_TITLES.get(arch, arch if ":" in arch else arch.upper())


def load_runs(roots, strict=False, warn=None, at_epoch=None):
    """One row per record under ``roots`` (each file once, however the roots
    overlap), labelled by configuration (:func:`label_variants`). Bad files
    are reported (by path) and skipped; with ``strict`` the first one raises
    RecordError. ``at_epoch``: every run's numbers as they stood after that
    epoch (:func:`truncate_record`)."""
    warn = warn or (lambda msg: warnings.warn(msg))
    rows, bad, seen = [], [], set()
    for root in roots:
        for path in find_records(root):
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
            try:
                record = load_record(path)  # checks every field _row reads
            except RecordError as exc:
                if strict:
                    raise
                bad.append(str(exc))
                warn(f"skipped {exc}")
                continue
            rows.append(_row(truncate_record(record, at_epoch) if at_epoch else record, path))
    return label_variants(pd.DataFrame(rows)), bad


def truncate_record(record, epoch):
    """``record`` as it stood after ``epoch``: its curves and alignment cut
    there, its summary recomputed, and its config's epochs set to ``epoch``,
    so runs of different lengths compare at equal training. Under a constant
    or a multistep schedule this is exactly the shorter run; under cosine
    (whose lr depends on the length) it is not, so such a run keeps its own
    epochs and is labelled apart. A run that ended before ``epoch`` (stopped,
    unfinished, stopped early) counts as unfinished in the ``epoch`` row; one
    that diverged before it stays diverged there."""
    config = dict(record["config"])
    if config.get("lr_schedule", "constant") != "cosine":
        config["epochs"] = epoch
    done = record["summary"].get("epochs_done", 0)
    if done < epoch:
        return dict(record, config=config, status="diverged" if record["status"] == "diverged" else "short")
    curves = {key: values[:epoch] for key, values in record["curves"].items()
              if isinstance(values, list) and len(values) == done}
    curves = dict(record["curves"], **curves)
    summary = dict(record["summary"], **summarize_curves(curves))
    alignment = [entry for entry in record.get("alignment", []) if entry.get("epoch", 0) <= epoch]
    return dict(record, status="complete", curves=curves, summary=summary, config=config, alignment=alignment)


# Record config keys that name a run's cell or do not change its numbers.
CELL_KEYS = ("dataset", "arch", "algo", "seed")
NOT_RESULT_KEYS = ("eval_batch_size",)


def _row(record, path):
    cfg, summary = record["config"], record["summary"]
    # Records from before a field existed ran at its neutral value.
    setting = {k: v for k, v in {**LATER_FIELDS, **cfg}.items() if k not in CELL_KEYS + NOT_RESULT_KEYS}
    # The rule's options as the run used them (``setting`` keeps those it was
    # given, for commands that rerun it): labels read "dfa (placement=block)"
    # and two spellings of one setting are one row. An option newer than the
    # record ran at today's default (options are added with the old
    # behaviour as their default).
    defaults = RULES.get(cfg["algo"]).defaults if cfg["algo"] in RULES else {}
    options = {**defaults, **(cfg.get("rule_options") or {}), **((record.get("rule") or {}).get("options") or {})}
    row = {"dataset": cfg["dataset"], "arch": cfg["arch"], "rule": cfg["algo"], "seed": cfg["seed"],
           "status": record["status"], "epochs": cfg["epochs"], "epochs_done": summary.get("epochs_done", 0),
           "forward_params": record["params"]["forward_total"],
           "feedback_params": record["params"]["feedback_total"], "path": path,
           "finished_at": record.get("finished_at") or "",
           "best_val_epoch": summary.get("best_val_epoch"),
           "setting": json.dumps(setting, sort_keys=True, default=str),
           "options": json.dumps(options, sort_keys=True, default=str),
           "train_subset": cfg.get("train_subset", 0) or 0,
           "seconds_per_epoch": _mean(record["curves"].get("seconds", [])),
           "has_parts": any("parts" in entry for entry in record.get("alignment", [])[:1])}
    for key, (field, _) in METRICS.items():
        row[key] = summary.get(field)
    return row


def _mean(values):
    return sum(values) / len(values) if values else None


def short_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={short_value(v)}" for k, v in sorted(value.items())) or "defaults"
    return str(value)


def varying_keys(settings):
    """The keys whose values differ among ``settings`` (dicts; a key one lacks
    counts as None there)."""
    names = set().union(*settings)
    return {k for k in names if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings}) > 1}


def variant_label(rule, fields, keys):
    """``rule (key=value, ...)`` over ``keys`` of ``fields``, or ``rule`` alone;
    rule options are named without their ``rule_options.`` prefix."""
    shown = ", ".join(f"{k.removeprefix('rule_options.')}={short_value(fields.get(k))}" for k in sorted(keys))
    return f"{rule} ({shown})" if shown else rule


def label_variants(runs):
    """Add ``label``: the rule's name, plus the settings (everything in the
    config but the cell and the seed) that tell its runs apart. Runs of one
    rule that differ in anything but the seed get different labels, so they
    are never averaged together."""
    if runs.empty:
        return runs.assign(label=pd.Series(dtype=str))
    runs = runs.copy()
    if "options" not in runs:
        runs["options"] = "{}"
    keys = list(zip(runs["setting"], runs["options"]))
    labels = {}
    for rule, part in runs.groupby("rule", sort=False):
        settings = {key: _label_fields(*key) for key in zip(part["setting"], part["options"])}
        varying = set()
        for _, cell in part.groupby(["dataset", "arch"]):
            varying |= varying_keys([settings[key] for key in dict.fromkeys(zip(cell["setting"], cell["options"]))])
        for key, fields in settings.items():
            labels[(rule, key)] = variant_label(rule, fields, varying)
    runs["label"] = [labels[(r, key)] for r, key in zip(runs["rule"], keys)]
    return runs


def _label_fields(setting, options):
    """A run's settings with its rule options, defaults filled in, one key each."""
    fields = json.loads(setting)
    fields.pop("rule_options", None)
    fields.update({f"rule_options.{k}": v for k, v in json.loads(options).items()})
    return fields


def one_per_seed(cell):
    """A cell's records with each seed once: a complete run before any
    other, then the latest. Returns (kept, dropped)."""
    ranked = cell.assign(_complete=cell["status"] == "complete").sort_values(
        ["_complete", "finished_at"], ascending=False, kind="stable")
    kept = ranked.drop_duplicates("seed", keep="first")
    dropped = ranked.drop(kept.index)
    return kept.drop(columns="_complete"), dropped.drop(columns="_complete")


# robustness (cli.py robustness writes robustness.json into each run folder) ----------------------------


def _read_robustness(run, warn):
    """The run's robustness.json (checked), or None: none there, or a bad one (skipped with a ``warn``ing)."""
    try:
        return read_robustness(os.path.dirname(run.path))
    except RecordError as exc:
        warn(f"skipped {exc}")
        return None


def _evaluated_runs(runs, warn):
    """``(run, robustness.json)`` of the complete runs that have one, each
    seed of a cell once (:func:`one_per_seed`), so a copied folder or two
    overlapping roots cannot count a seed twice."""
    found = {}
    for index, run in runs.iterrows():
        result = _read_robustness(run, warn)
        if result is None:
            continue
        if run.status != "complete":
            warn(f"{os.path.dirname(run.path)} is {run.status}: its robustness.json is left out")
            continue
        found[index] = result
    evaluated = runs.loc[list(found)]
    kept = []
    for key, cell in evaluated.groupby(["dataset", "arch", "rule", "label"], sort=False):
        cell_kept, dropped = one_per_seed(cell)
        for _, extra in dropped.iterrows():
            warn(f"seed {extra.seed} of {' '.join(key[:2])} {key[3]} has more than one robustness.json; counted "
                 f"{cell_kept[cell_kept.seed == extra.seed].iloc[0].path}'s, not {extra.path}'s")
        kept += [(run, found[index]) for index, run in cell_kept.iterrows()]
    return kept


def _evaluated_epoch_is_current(run, state, entry, warn):
    """Whether ``entry`` (one state of a robustness.json) evaluated the model
    the record now describes: a run resumed for more epochs after its
    evaluation keeps the old file, which would otherwise stand for the new model."""
    expected = run.epochs_done if state == "final" else run.best_val_epoch
    evaluated = entry.get("epoch")
    if evaluated is None or expected is None or pd.isna(expected) or int(evaluated) == int(expected):
        return True
    warn(f"{os.path.dirname(run.path)}: robustness.json evaluated the {state} model of epoch {evaluated}, the "
         f"record's is epoch {int(expected)}; left out (run: python cli.py robustness --runs "
         f"{os.path.dirname(run.path)})")
    return False


def load_robustness(runs, warn=None):
    """One row per number of every robustness.json beside the complete
    records of ``runs`` (a :func:`load_runs` table; each seed once, states
    evaluated on an older model left out, with a ``warn``ing): ``kind``
    ``attack`` (attack, gradient, eps) or ``corruption`` (corruption,
    severity; severity 0 is the run's mean over its severities), with the
    run's dataset, arch, rule, label and seed."""
    warn = warn or (lambda message: None)
    rows = []
    for run, result in _evaluated_runs(runs, warn):
        settings = result.get("settings", {})
        pgd = settings.get("pgd", {})
        protocol = (f"{result.get('test_images', '?')} images, PGD {pgd.get('steps', '?')} x "
                    f"{pgd.get('step_size', 0):.3g}" + ("" if pgd.get("random_start", True) else ", no random start"))
        cell = {"dataset": run.dataset, "arch": run.arch, "rule": run.rule, "label": run.label, "seed": run.seed,
                "protocol": protocol, "attack_set": "+".join(sorted(settings.get("attacks", [])))}
        for state, entry in result.get("states", {}).items():
            if not _evaluated_epoch_is_current(run, state, entry, warn):
                continue
            for row in entry.get("attacks", []):
                rows.append({**cell, "state": state, "kind": "attack", "attack": row["attack"],
                             "gradient": row["gradient"], "eps": row["eps"], "error": row["error"]})
            by_name = {}
            for row in entry.get("corruptions", []):
                rows.append({**cell, "state": state, "kind": "corruption", "attack": row["corruption"],
                             "gradient": "", "eps": row["severity"], "error": row["error"]})
                by_name.setdefault(row["corruption"], []).append(row["error"])
            for name, errors in by_name.items():  # "severity 0": the run's mean over its severities
                rows.append({**cell, "state": state, "kind": "corruption", "attack": name, "gradient": "",
                             "eps": 0, "error": sum(errors) / len(errors)})
    table = pd.DataFrame(rows, columns=["dataset", "arch", "rule", "label", "seed", "protocol", "attack_set", "state",
                                        "kind", "attack", "gradient", "eps", "error"])
    # Runs evaluated with another protocol than most (fewer images, fewer PGD steps: EP's; another set of
    # attacks, whose "strongest" would mean something else) are rows of their own.
    for dataset, part in table.groupby("dataset"):
        usual_protocol, usual_attacks = part.groupby(["protocol", "attack_set"]).size().idxmax()
        here = table.dataset == dataset
        other_attacks = here & (table.attack_set != usual_attacks)
        other = here & ((table.protocol != usual_protocol) | other_attacks)
        suffix = table.protocol.where(~other_attacks, table.protocol + ", attacks " + table.attack_set)
        table.loc[other, "label"] = table.loc[other, "label"] + " [" + suffix[other] + "]"
    return table.drop(columns="attack_set")


# The eps of the headline block, per dataset: where the rules' columns differ
# (on MNIST, undefended nets are near 100% error from 0.1 under a true-gradient
# attack; Akrout et al.'s claim is about eps of this size and above).
HEADLINE_EPS = {"mnist": 0.1, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar10-jpeg": 8 / 255,
                "imagefolder": 2 / 255}
RUN_KEYS = ["dataset", "arch", "rule", "label", "seed"]


def headline_rows(part):
    """Per run of ``part`` (one state's attack rows), at its dataset's
    :data:`HEADLINE_EPS`: the clean error (``attack`` "clean") and, per
    gradient, the largest error over the attacks (``attack`` "strongest"):
    a lower bound on the error of an attacker who tries them all per image."""
    attacks = part[part.kind == "attack"]
    found = []
    for dataset, data in attacks.groupby("dataset", sort=False):
        eps = HEADLINE_EPS.get(dataset)
        at = data[(data.eps - eps).abs() < 1e-9] if eps is not None else data.iloc[:0]
        if at.empty:
            continue
        clean = data[data.eps == 0].groupby(RUN_KEYS, sort=False)["error"].first().reset_index()
        strongest = at.groupby(RUN_KEYS + ["gradient"], sort=False)["error"].max().reset_index()
        found += [clean.assign(attack="clean", gradient="", eps=eps), strongest.assign(attack="strongest", eps=eps)]
    if not found:
        return part.iloc[:0]
    return pd.concat(found, ignore_index=True).assign(kind="headline", state=part.state.iloc[0])


def robustness_summary(rows, state="final"):
    """Mean, sample std and number of seeds of each (dataset, arch, label,
    kind, attack, gradient, eps) of the ``state`` models, with the
    :func:`headline_rows` as kind ``headline``."""
    part = rows[rows.state == state]
    keys = ["dataset", "arch", "rule", "label", "kind", "attack", "gradient", "eps"]
    if part.empty:
        return pd.DataFrame(columns=keys + ["mean", "std", "n"])
    part = pd.concat([part, headline_rows(part)], ignore_index=True)
    grouped = part.groupby(keys, sort=False)["error"]
    return grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else float("nan"),
                       n="count").reset_index()
