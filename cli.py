"""biobench command line: ``python cli.py --help`` (or ``biobench --help``)."""
import math
import os
import signal
import sys

import click

from benchmark.data import DATA_ENV, DATASETS
from benchmark.grid import PRESETS
from models import ARCHS, RULES

DEFAULT_OUT = os.path.join("results", "runs")


class BadInput(click.ClickException):
    """A one-line error about a bad value; exit code 2 like click's own."""
    exit_code = 2


class FiniteFloat(click.ParamType):
    """A float that is finite and inside (low, high]."""
    name = "float"

    def __init__(self, low=0.0, high=math.inf, low_open=True):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        bad_low = number <= self.low if self.low_open else number < self.low
        if not math.isfinite(number) or bad_low or number > self.high:
            side = ">" if self.low_open else ">="
            upper = f" and <= {self.high:g}" if math.isfinite(self.high) else ""
            self.fail(f"{value!r} is not allowed; it must be finite, {side} {self.low:g}{upper}", param, ctx)
        return number


def parse_key_values(pairs, flag):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"{flag} {pair!r} is not KEY=VALUE")
        options[key] = value
    return options


def parse_rule_options(pairs):
    return parse_key_values(pairs, "--rule-opt")


def _install_sigterm():
    """SIGTERM behaves like Ctrl-C: the trainer checkpoints and exits."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """biobench: backprop vs feedback-alignment-family learning rules on fully
    connected, convolutional and locally connected networks (Bartunov et al. 2018)."""


def training_options(func):
    """Options shared by ``run`` and ``grid``."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Training epochs."),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--lr", type=FiniteFloat(), default=3e-4, show_default=True,
                     help="Adam learning rate (the paper searched 1e-5..3e-4)."),
        click.option("--beta1", type=FiniteFloat(0, 1, low_open=False), default=0.9, show_default=True),
        click.option("--beta2", type=FiniteFloat(0, 1, low_open=False), default=0.999, show_default=True),
        click.option("--eps", type=FiniteFloat(), default=1e-8, show_default=True, help="Adam epsilon."),
        click.option("--weight-decay", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="Multiply every forward weight by (1 - WD) after each step. Default: the rule's "
                          "own, 0 (as in Bartunov et al.) except kp 1e-4, which needs decay for B to reach W; "
                          "grids add a bp control at every other decay they use."),
        click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.0,
                     show_default=True,
                     help="Fraction of the training set held out for validation (fixed split); "
                          "enables the honest 'test error at best validation epoch' metric."),
        click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Early stopping: stop once validation error has not improved for this many "
                          "epochs (needs --val-split; 0 = never). The record says where and why."),
        click.option("--augment/--no-augment", default=None,
                     help="Random crop + flip; default on for CIFAR-10 and image folders, off for MNIST."),
        click.option("--train-subset", type=click.IntRange(min=0), default=0,
                     help="Train on N training images only (0 = all), a fixed class-stratified sample "
                          "(the same for every run); for quick checks."),
        click.option("--rule-opt", multiple=True, metavar="KEY=VALUE",
                     help="Rule option, e.g. --rule-opt alpha=0.1 for dtp-par (see the README)."),
        click.option("--data-dir", type=click.Path(file_okay=False), envvar=DATA_ENV, default="data",
                     show_default=True, help=f"torchvision data root (env {DATA_ENV})."),
        click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True,
                     help="Folder that receives one run folder per run."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present), cpu, cuda or cuda:N."),
        click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines."),
        click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
                     help="Also write the per-epoch curves and per-layer alignment as TensorBoard scalars "
                          "into this folder, one TensorBoard run per run folder (pip install -e \".[tensorboard]\")."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="torch threads per run (default: all cores for run; cores / --jobs for grid)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_data_dir(path):
    if not os.path.isdir(path):
        raise BadInput(f"--data-dir {path!r} is not a folder (set --data-dir or ${DATA_ENV} to a "
                       f"torchvision data root)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BadInput(f"--data-dir {path!r} is not readable")


def check_out_dir(path):
    """``path`` exists as a writable folder or can be created: checked by
    creating (and removing) a scratch folder in its nearest existing ancestor,
    so a read-only place, a file in the way or a pseudo file system like /proc
    is one line before any training starts."""
    import tempfile
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise BadInput(f"--out {path!r} cannot be created: {probe} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".biobench-probe-", dir=probe))
    except OSError as exc:
        raise BadInput(f"--out {path!r} cannot be created or written: {exc.strerror} in {probe}") from None


@cli.command()
@click.option("--arch", type=click.Choice(ARCHS.names()), default="lc", show_default=True,
              help="Network (Bartunov et al. 2018, Table 3).")
@click.option("--algo", type=click.Choice(RULES.names()), default="bp", show_default=True,
              help="Learning rule.")
@click.option("--dataset", type=click.Choice(DATASETS.names()), default="mnist", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@training_options
@click.option("--resume", is_flag=True, help="Continue this config's run from its last checkpoint.")
def run(arch, algo, dataset, seed, resume, quiet, out, data_dir, device, rule_opt, threads, tensorboard, **options):
    """Train one network with one learning rule and write its record."""
    from benchmark.runs import start_run
    if threads:
        import torch
        torch.set_num_threads(threads)
    record, run_dir = start_run(
        dict(arch=arch, algo=algo, dataset=dataset, seed=seed, **options),
        rule_options=parse_rule_options(rule_opt), data_dir=data_dir, out=out, device=device,
        progress=not quiet, resume=resume, bad_input=BadInput, check_data_dir=check_data_dir,
        check_out_dir=check_out_dir, tensorboard=checked_board(tensorboard))
    summary = record["summary"]
    click.echo(f"{record['status']}: {dataset} {arch} {algo} seed {seed}: test error "
               f"{summary['final_test_error']:.2f}% (best {summary['best_test_error']:.2f}% at epoch "
               f"{summary['best_test_epoch']}); record: {os.path.join(run_dir, 'record.json')}"
               if summary.get("final_test_error") is not None else
               f"{record['status']}: record: {os.path.join(run_dir, 'record.json')}")
    if record.get("early_stop"):
        click.echo(f"stopped early at epoch {record['early_stop']['epoch']}: {record['early_stop']['reason']}")
    if record["status"] == "diverged":
        raise click.ClickException(f"run diverged at epoch {summary['diverged_at_epoch']} "
                                   f"(loss or weights not finite); record marked 'diverged'")


def executor_options(func):
    """Where the cells of ``grid`` and ``search`` run: local worker processes or a Slurm job array."""
    options = [
        click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                     help="local: worker processes here (--jobs); slurm: one Slurm job array through submitit "
                          "(pip install -e \".[slurm]\")."),
        click.option("--slurm-partition", default=None, help="Slurm partition (default: the cluster's)."),
        click.option("--slurm-time", type=click.IntRange(min=1), default=60, show_default=True,
                     help="Time limit per cell, in minutes; a cell that hits it is requeued and resumes."),
        click.option("--slurm-gpus-per-task", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--slurm-cpus-per-task", type=click.IntRange(min=1), default=None),
        click.option("--slurm-mem", default=None, help="Memory per cell, e.g. 16G."),
        click.option("--slurm-array-parallelism", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Cells of the array running at once."),
        click.option("--slurm-opt", multiple=True, metavar="KEY=VALUE",
                     help="Passed to sbatch through submitit's slurm_additional_parameters, e.g. "
                          "--slurm-opt account=mylab --slurm-opt qos=high."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def checked_board(folder):
    """The --tensorboard folder, once tensorboard is known to be importable."""
    if folder:
        from benchmark.board import BoardError, check_available
        try:
            check_available()
        except BoardError as exc:
            raise BadInput(str(exc)) from None
        check_out_dir(folder)
    return folder


def make_cell_runner(executor, slurm, device, jobs, threads, echo, wait=True, epoch_lines=True, tensorboard=None):
    """``runner(cells, out, data_dir) -> {status: count}`` for the chosen executor."""
    from benchmark.grid import run_grid
    tensorboard = checked_board(tensorboard)
    if executor == "local":
        return lambda cells, out, data_dir: run_grid(cells, out, data_dir, device=device, jobs=jobs, echo=echo,
                                                     threads=threads, epoch_lines=epoch_lines,
                                                     tensorboard=tensorboard)
    from benchmark import cluster
    options = cluster.SlurmOptions(partition=slurm["slurm_partition"], time_minutes=slurm["slurm_time"],
                                   gpus_per_task=slurm["slurm_gpus_per_task"],
                                   cpus_per_task=slurm["slurm_cpus_per_task"], mem=slurm["slurm_mem"],
                                   array_parallelism=slurm["slurm_array_parallelism"],
                                   extra=parse_key_values(slurm["slurm_opt"], "--slurm-opt"))

    def runner(cells, out, data_dir):
        try:
            submitted, jobs_, skipped = cluster.submit(cells, out, data_dir, device, threads, options, echo=echo,
                                                       tensorboard=tensorboard)
        except cluster.ClusterError as exc:
            raise BadInput(str(exc)) from None
        if not submitted:
            echo(f"slurm: nothing to submit ({skipped} cell(s) done or already queued)")
            return {}
        job_id = jobs_[0].job_id.split("_")[0]
        echo(f"slurm: submitted {len(submitted)} cell(s) as job array {job_id} ({skipped} done or queued); "
             f"logs in {os.path.join(out, cluster.LOGS)}")
        if not wait:
            echo(f"check on it with: squeue -j {job_id}, or python cli.py grid --status {out}")
            return {"submitted": len(submitted)}
        return cluster.wait(submitted, jobs_, out, echo=echo)
    return runner


def select_grid(preset, datasets, archs, algos):
    base = PRESETS.get(preset, {"datasets": ["mnist"], "archs": ["fc", "lc", "conv"], "algos": ["bp"]})
    chosen = {}
    for key, value, registry in (("datasets", datasets, DATASETS), ("archs", archs, ARCHS),
                                 ("algos", algos, RULES)):
        names = value.split(",") if value else base[key]
        for name in names:
            if name not in registry:
                raise BadInput(f"--{key}: unknown {registry.kind} {name!r}; allowed: "
                               f"{', '.join(registry.names())}")
        chosen[key] = names
    return chosen


@cli.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="A named grid mirroring the paper's Table 1 cells.")
@click.option("--datasets", default=None, help="Comma-separated datasets (overrides the preset).")
@click.option("--archs", default=None, help="Comma-separated architectures (overrides the preset).")
@click.option("--algos", default=None, help="Comma-separated learning rules (overrides the preset).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Number of seeds (0..N-1).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run in parallel worker processes (threads split between them).")
@executor_options
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="With --executor slurm: block until every cell ends (a line per finished cell), or return "
                   "after submitting.")
@click.option("--status", "status_dir", type=click.Path(file_okay=False), default=None,
              help="Only print the cells under this folder by status (complete, running, resumable, failed, "
                   "diverged, and, with a grid selection, missing); train nothing.")
@click.option("--from-search", "from_search", type=click.Path(file_okay=False), multiple=True,
              help="Instead of a grid selection: train the settings chosen by every finished search under this "
                   "folder (repeatable), for --epochs, with seeds 1..--seeds (the trials ran seed 0, whose result took part "
                   "in the choice); every other setting is the search's.")
@training_options
def grid(preset, datasets, archs, algos, seeds, jobs, wait, status_dir, from_search, quiet, out, data_dir, device,
         rule_opt, threads, executor, tensorboard, **options):
    """Run a grid of runs; re-running the same command finishes only what is missing."""
    from benchmark.grid import grid_cells
    slurm = {k: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    if from_search:
        cells = cells_from_search(from_search, seeds, options)
    else:
        chosen = select_grid(preset, datasets, archs, algos)
        try:
            cells = grid_cells(chosen["datasets"], chosen["archs"], chosen["algos"], range(seeds), options,
                               parse_rule_options(rule_opt))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    if status_dir is not None:
        from benchmark.cluster import grid_status
        if not os.path.isdir(status_dir):
            raise BadInput(f"--status {status_dir!r} is not a folder")
        selected = preset or datasets or archs or algos or from_search
        for status, names in grid_status(status_dir, cells if selected else None).items():
            click.echo(f"{status}: {len(names)}")
            for name in names:
                click.echo(f"  {name}")
        return
    check_data_dir(data_dir)
    check_out_dir(out)
    echo = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    runner = make_cell_runner(executor, slurm, device, jobs, threads, echo, wait=wait, epoch_lines=not quiet,
                              tensorboard=tensorboard)
    from benchmark.train import RunInterrupted
    try:
        counts = runner(cells, out, data_dir)
    except (RunInterrupted, KeyboardInterrupt):
        raise click.ClickException("grid interrupted; rerun the same command to finish the missing "
                                   "cells (interrupted ones resume from their checkpoints)") from None
    if counts.get("submitted"):
        return
    click.echo("grid finished: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) if counts
               else "grid finished: nothing to do")
    if counts.get("failed"):
        raise click.ClickException(f"{counts['failed']} cell(s) failed; see error.txt in their run folders"
                                   + (" and the Slurm logs" if executor == "slurm" else ""))


# What --from-search takes from the command line; every other setting is the search's.
FROM_SEARCH_OPTIONS = ("epochs", "patience")
GRID_SELECTION_OPTIONS = ("preset", "datasets", "archs", "algos", "rule_opt")


def cells_from_search(folders, seeds, options):
    from benchmark.search import chosen_configs, find_searches
    ctx = click.get_current_context()
    refused = (set(options) - set(FROM_SEARCH_OPTIONS)) | set(GRID_SELECTION_OPTIONS)
    for param in ctx.command.params:
        if param.name in refused and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE:
            raise BadInput(f"{param.opts[0]} cannot be combined with --from-search: the settings are the "
                           f"search's (only {', '.join('--' + o for o in FROM_SEARCH_OPTIONS)} apply)")
    for folder in folders:
        if not os.path.isdir(folder):
            raise BadInput(f"--from-search {folder!r} is not a folder")
    cells = chosen_configs(find_searches(folders), options["epochs"], seeds, options["patience"])
    if not cells:
        raise BadInput(f"--from-search {', '.join(map(repr, folders))}: no finished search there (a search.json "
                       f"with a choice)")
    return cells


SEARCHED_TRAINING_OPTIONS = ("lr", "beta2", "eps")
# Search always chooses on held-out training data; this much unless --val-split says otherwise.
SEARCH_VAL_SPLIT = 0.1


@cli.command()
@click.option("--arch", type=click.Choice(ARCHS.names()), default="fc", show_default=True)
@click.option("--algo", type=click.Choice(RULES.names()), default="bp", show_default=True)
@click.option("--dataset", type=click.Choice(DATASETS.names()), default="mnist", show_default=True)
@click.option("--trials", type=click.IntRange(min=1), default=60, show_default=True,
              help="Random configurations (the paper: 60 per cell).")
@click.option("--search-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sampler; trial i depends only on (search seed, i).")
@click.option("--space", "space_overrides", multiple=True, metavar="NAME=SPEC",
              help="Narrow or widen a searched setting: SPEC is log:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH "
                   "or choice:A,B,... (defaults: lr log:1e-5:3e-3, beta2 choice:0.99,0.999, eps "
                   "choice:1e-4,1e-6,1e-8, plus the rule's own, e.g. TP's inverse_lr, sigma, alpha).")
@click.option("--halving", type=click.IntRange(min=0), default=0, show_default=True,
              help="Successive halving with this factor (e.g. 3): all trials train --min-epochs, the best third "
                   "continues to 3x as many, and so on up to --epochs. 0 = off.")
@click.option("--min-epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs of the first halving rung.")
@click.option("--final-seeds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Then train the chosen settings with this many fresh seeds, 1..S (in <search>/final; "
                   "the trials ran seed 0, whose result took part in the choice).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials run in parallel worker processes.")
@executor_options
@training_options
def search(arch, algo, dataset, trials, search_seed, space_overrides, halving, min_epochs, final_seeds, jobs, quiet,
           out, data_dir, device, rule_opt, threads, executor, tensorboard, **options):
    """Random search of one (dataset, arch, rule) cell, chosen on the validation split
    (10% of the training set unless --val-split says otherwise; never the test set)."""
    from benchmark.search import Search, search_space
    slurm = {k: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    from benchmark.train import RunInterrupted
    ctx = click.get_current_context()
    for name in SEARCHED_TRAINING_OPTIONS:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise BadInput(f"--{name} is searched; fix it with --space {name}=choice:VALUE instead")
    if ctx.get_parameter_source("val_split") != click.core.ParameterSource.COMMANDLINE:
        options["val_split"] = SEARCH_VAL_SPLIT
    if not options["val_split"]:
        raise BadInput("--val-split 0: search chooses on a validation split, so it needs one in (0, 1), e.g. "
                       f"{SEARCH_VAL_SPLIT} (the test set is never used for choosing)")
    overrides = parse_key_values(space_overrides, "--space")
    try:
        space = search_space(algo, overrides)
        rule_options = parse_rule_options(rule_opt)
        searched_rule_options = sorted(set(rule_options) & set(space))
        if searched_rule_options:
            raise ValueError(f"--rule-opt {searched_rule_options[0]} is searched; fix it with --space "
                             f"{searched_rule_options[0]}=choice:VALUE instead")
        from models import make_rule
        rule = make_rule(algo, **rule_options)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    check_data_dir(data_dir)
    check_out_dir(out)
    if options["weight_decay"] is None:
        options["weight_decay"] = rule.default_weight_decay
    base = {k: v for k, v in options.items() if k not in space}
    try:
        job = Search(dataset=dataset, arch=arch, algo=algo, trials=trials, epochs=options["epochs"],
                     search_seed=search_seed, space=space, base={k: v for k, v in base.items() if k != "epochs"},
                     rule_options={k: rule.options[k] for k in rule_options}, halving=halving,
                     min_epochs=min_epochs, final_seeds=final_seeds)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    echo = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    # Each rung's choice needs its trials finished, so a Slurm search always waits.
    runner = make_cell_runner(executor, slurm, device, jobs, threads, echo, wait=True, epoch_lines=False,
                              tensorboard=tensorboard)
    try:
        record = job.run(out, data_dir, echo=echo, runner=runner)
    except (RunInterrupted, KeyboardInterrupt):
        raise click.ClickException("search interrupted; rerun the same command to go on (finished trials are "
                                   "kept, interrupted ones resume from their checkpoints)") from None
    folder = job.folder(out)
    if record["status"] != "complete":
        raise click.ClickException(f"no trial finished with a validation error; see {folder}")
    chosen = record["chosen"]
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in chosen["settings"].items())
    click.echo(f"chosen (trial {chosen['trial']} of {trials}, best validation error "
               f"{chosen['best_val_error']:.2f}%): {settings}")
    click.echo(f"search record: {os.path.join(folder, 'search.json')}")
    if final_seeds:
        click.echo(f"final runs: {os.path.join(folder, 'final')} (python cli.py table --runs {folder})")


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--section", "sections", multiple=True, type=click.Choice(["lc", "rules", "harness"]),
              help="Run only these sections (default: all).")
@click.option("--quick", is_flag=True, help="Tiny sizes, to check that the command works.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: all cores).")
def bench(device, sections, quick, threads):
    """Measure the LC layer, the rules and the harness; print Markdown tables."""
    import torch
    from benchmark.perf import run_bench
    from benchmark.train import RunError, resolve_device
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = resolve_device(device)
    except RunError as exc:
        raise BadInput(str(exc)) from None
    run_bench(dev, sections=sections or ("lc", "rules", "harness"), quick=quick, echo=click.echo)


def _load_summary(runs, metric, seeds, strict):
    from benchmark.records import RecordError
    from benchmark.tables import load_runs, summarize
    for root in runs:
        if not os.path.isdir(root):
            raise BadInput(f"--runs {root!r} is not a folder")
    try:
        table, bad = load_runs(runs, strict=strict, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    except RecordError as exc:
        raise click.ClickException(f"bad record (--strict): {exc}") from None
    if table.empty:
        raise click.ClickException(f"no run records found under {', '.join(runs)}")
    summary = summarize(table, metric=metric, seeds=seeds, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    return table, summary, bad


runs_option = click.option("--runs", multiple=True, type=click.Path(file_okay=False), default=[DEFAULT_OUT],
                           show_default=True, help="Folder(s) searched for run records (repeatable).")
metric_option = click.option("--metric", type=click.Choice(["best", "final", "val"]), default="best",
                             show_default=True,
                             help="best: best test error over epochs (paper); final: last epoch; "
                                  "val: test error at the best validation epoch.")


@cli.command()
@runs_option
@metric_option
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds expected per cell (cells with fewer are flagged); default: the most any cell has.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write table_METRIC.{md,csv,tex}, params.{md,csv,tex} and, when the folders hold "
                   "searches, chosen.{md,csv,tex} into this folder.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]), default="markdown",
              show_default=True, help="What to print.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on the first unreadable record instead of skipping it.")
def table(runs, metric, seeds, out, fmt, strict):
    """Build the results and parameter-count tables from run records."""
    from benchmark import tables
    from benchmark.io import write_text
    _, summary, bad = _load_summary(runs, metric, seeds, strict)
    texts = {"markdown": tables.to_markdown(summary, metric), "csv": tables.to_csv(summary),
             "latex": tables.to_latex(summary, metric)}
    if out:
        check_out_dir(out)
        params = tables.parameter_table(summary)
        for ext, key in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
            write_text(os.path.join(out, f"table_{metric}.{ext}"), texts[key])
        write_text(os.path.join(out, "params.md"), tables.parameters_markdown(params))
        write_text(os.path.join(out, "params.csv"), params.to_csv(index=False))
        write_text(os.path.join(out, "params.tex"), tables.parameters_latex(params))
    from benchmark.search import find_searches
    chosen = tables.chosen_table(find_searches(runs))
    if out and not chosen.empty:
        write_text(os.path.join(out, "chosen.md"), tables.chosen_markdown(chosen))
        write_text(os.path.join(out, "chosen.csv"), chosen.to_csv(index=False))
        write_text(os.path.join(out, "chosen.tex"), tables.chosen_latex(chosen))
    click.echo(texts[fmt], nl=False)
    if not chosen.empty:
        click.echo("\nChosen settings:\n\n" + tables.chosen_markdown(chosen), nl=False)
    if bad:
        click.echo(f"warning: {len(bad)} record(s) skipped (see above)", err=True)


@cli.command()
@runs_option
@metric_option
@click.option("--out", type=click.Path(file_okay=False), default=os.path.join("results", "plots"),
              show_default=True, help="Folder for the PNG and PDF files.")
def plot(runs, metric, out):
    """Bar, learning-curve, alignment, parameters-vs-error and search plots (PNG + PDF)."""
    from benchmark import plots
    from benchmark.search import find_searches
    table, summary, _ = _load_summary(runs, metric, None, False)
    check_out_dir(out)
    paths = plots.all_plots(table, summary, metric, out, find_searches(runs))
    for path in paths:
        click.echo(path)


@cli.command()
@click.option("--runs", multiple=True, type=click.Path(file_okay=False), default=None,
              help="Cite the rules found in these run folders.")
@click.option("--algos", default=None, help="Comma-separated rules to cite (default: all, or those in --runs).")
@click.option("--format", "fmt", type=click.Choice(["bibtex", "text"]), default="bibtex", show_default=True)
def cite(runs, algos, fmt):
    """BibTeX (or text) for biobench, Bartunov et al. 2018 and the rules used."""
    from benchmark import cite as citations
    if algos:
        names = algos.split(",")
        for name in names:
            if name not in RULES:
                raise BadInput(f"--algos: unknown learning rule {name!r}; allowed: {', '.join(RULES.names())}")
    elif runs:
        table, _, _ = _load_summary(runs, "best", None, False)
        names = sorted(set(table.algo))
    else:
        names = RULES.names()
    keys = citations.keys_for_rules(names)
    click.echo(citations.bibtex(keys) if fmt == "bibtex" else citations.plain_text(keys), nl=False)


@cli.command()
@runs_option
@metric_option
@click.option("--out", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
@click.option("--title", default=None, help="Title of the report (default: the --runs folders).")
def report(runs, metric, out, title):
    """One self-contained HTML page: tables, plots, chosen settings, provenance."""
    from benchmark.io import write_text
    from benchmark.report import render
    from benchmark.search import find_searches
    table, summary, _ = _load_summary(runs, metric, None, False)
    check_out_dir(os.path.dirname(os.path.abspath(out)))
    write_text(out, render(table, summary, metric, find_searches(runs), title or ", ".join(runs)))
    click.echo(out)


@cli.command()
def rules():
    """Every learning rule, built-in or plug-in: source, title, citations, options."""
    for name in RULES.registered():
        rule = RULES.get(name)
        options = ", ".join(f"{k}={v}" for k, v in rule.defaults.items()) or "none"
        click.echo(f"{name}\n  source: {RULES.source(name)}\n  title: {rule.title or '(none)'}\n"
                   f"  cite: {', '.join(rule.citation_keys) or '(none)'}\n  options: {options}")
    for problem in RULES.problems:
        click.echo(f"problem: {problem}")


def main():
    from benchmark.runtime import tune_allocator
    tune_allocator()
    _install_sigterm()
    cli(prog_name="biobench")


if __name__ == "__main__":
    main()
