"""biobench command line: ``python cli.py --help`` (or ``biobench --help``).

This module parses options and prints; the work, and every check of what the
user gave, lives in ``benchmark`` (errors there are ``BiobenchError``s, turned
into one ``error: ...`` line and an exit code in :class:`BiobenchGroup`). It
imports no torch at start-up: each command imports what it needs when it
runs, so ``--help`` and the commands that need no torch start at once.
"""
import math
import os
import signal

import click

from benchmark.errors import BiobenchError, ConfigError, GridFailed, ResultsMissing, RunDiverged, RunInterrupted
from benchmark.paths import DATA_ENV, check_data_dir, check_folders, check_out_dir

# torch-free, so the robustness command's defaults come from the module that defines them
from benchmark.robustness import settings as robustness_settings

DEFAULT_OUT = os.path.join("results", "runs")


class BiobenchGroup(click.Group):
    """The one place where a user-facing error becomes ``error: <message>``
    on stderr and its exit code (2 for bad input)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BiobenchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            # A bad option value is one line too, not click's usage block.
            click.echo(f"error: {exc.format_message()}", err=True)
            ctx.exit(exc.exit_code)


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read only when the option is used
    (so commands that do not need the registries never import torch)."""

    def __init__(self, load_names):
        self._load_names, self._names = load_names, None
        super().__init__([])

    @property
    def choices(self):
        if self._names is None:
            self._names = self._load_names()
        return self._names

    @choices.setter
    def choices(self, value):
        pass


class ArchChoice(RegistryChoice):
    """A registered architecture, or ``torchvision:NAME`` for any torchvision classification model."""

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(self.choices) + "|torchvision:NAME]"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("torchvision:"):
            from models.zoo import torchvision_names
            if value in torchvision_names():
                return value
            self.fail(f"{value!r} is not a torchvision classification model (e.g. torchvision:resnet18)", param, ctx)
        return super().convert(value, param, ctx)


def rule_names():
    from models import RULES
    return RULES.names()


def arch_names():
    from models import ARCHS
    return ARCHS.names()


def dataset_names():
    from benchmark.data import DATASETS
    return DATASETS.names()


def bench_section_names():
    from benchmark.perf import SECTIONS
    return list(SECTIONS)


def preset_names():
    from benchmark.grid import PRESETS
    return sorted(PRESETS)


def executor_names():
    from benchmark.executors import EXECUTORS
    return EXECUTORS.names()


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


class Duration(click.ParamType):
    """Seconds, or a number with s, m or h (``600``, ``9m``, ``1.5h``); positive."""
    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600}

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        scale = self.UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a duration; give seconds or a number with s, m or h, e.g. 600 or 9m",
                      param, ctx)
        return seconds


def continue_command():
    """The command line that was run (what continues a grid or search after its deadline)."""
    import shlex
    import sys
    return "python cli.py " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


class EpochList(click.ParamType):
    """Comma-separated epochs (positive integers, increasing), e.g. ``50,75``."""
    name = "epochs"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            epochs = [int(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            epochs = None
        if epochs is None or any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
            self.fail(f"{value!r} is not a list of increasing epochs like 50,75", param, ctx)
        return epochs


def parse_key_values(pairs, flag):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r} is not KEY=VALUE")
        options[key] = value
    return options


def parse_rule_options(pairs):
    return parse_key_values(pairs, "--rule-opt")


def given_on_command_line(names):
    """Which of these parameters the user typed (not defaults)."""
    ctx = click.get_current_context()
    return {name for name in names
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def _install_sigterm():
    """SIGTERM behaves like Ctrl-C: the trainer checkpoints and exits."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


@click.group(cls=BiobenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
                     help="Adam (--lr, --beta1, --beta2, --eps) or SGD (--lr, --momentum)."),
        click.option("--momentum", type=FiniteFloat(0, 1, low_open=False), default=0.0, show_default=True,
                     help="SGD momentum (e.g. 0.9, BioTorch's protocol)."),
        click.option("--l2-penalty", type=FiniteFloat(0, low_open=False), default=0.0, show_default=True,
                     help="Coupled L2 decay: L2 * W added to every gradient (the optimisers' weight_decay; "
                          "BioTorch's SGD protocol uses 1e-3). Not the same as --weight-decay."),
        click.option("--lr-schedule", type=click.Choice(["constant", "multistep", "cosine"]), default="constant",
                     show_default=True,
                     help="multistep: lr times --lr-gamma after each of --lr-milestones epochs; cosine: from lr "
                          "to 0 over --epochs (so a cosine run of other --epochs is another run, never extended)."),
        click.option("--lr-milestones", type=EpochList(), default="", help="e.g. 50,75 (with multistep)."),
        click.option("--lr-gamma", type=FiniteFloat(0, 1), default=0.1, show_default=True,
                     help="multistep only: the factor at each milestone."),
        click.option("--weight-decay", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="Decoupled decay: multiply every forward weight by (1 - WD) after each step. Default: "
                          "the rule's "
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
                     help="Rule option, e.g. --rule-opt alpha=0.1 for dtp-par (python cli.py rules lists them)."),
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


@cli.command()
@click.option("--arch", type=ArchChoice(arch_names), default="lc", show_default=True,
              help="Network (Bartunov et al. 2018, Table 3).")
@click.option("--algo", "rule", type=RegistryChoice(rule_names), default="bp", show_default=True,
              help="Learning rule.")
@click.option("--dataset", type=RegistryChoice(dataset_names), default="mnist", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@training_options
@click.option("--resume", is_flag=True, help="Continue this config's run from its last checkpoint.")
def run(arch, rule, dataset, seed, resume, quiet, out, data_dir, device, rule_opt, threads, tensorboard, **options):
    """Train one network with one learning rule and write its record."""
    from benchmark.runs import start_run
    if threads:
        import torch
        torch.set_num_threads(threads)
    check_data_dir(data_dir)
    check_out_dir(out)
    record, run_dir = start_run(dict(arch=arch, rule=rule, dataset=dataset, seed=seed, **options),
                                parse_rule_options(rule_opt), data_dir, out, device=device, progress=not quiet,
                                resume=resume, tensorboard=checked_board(tensorboard),
                                warn=lambda message: click.echo(message, err=True))
    summary, path = record["summary"], os.path.join(run_dir, "record.json")
    if summary.get("final_test_error") is None:
        click.echo(f"{record['status']}: record: {path}")
    else:
        click.echo(f"{record['status']}: {dataset} {arch} {rule} seed {seed}: test error "
                   f"{summary['final_test_error']:.2f}% (best {summary['best_test_error']:.2f}% at epoch "
                   f"{summary['best_test_epoch']}); record: {path}")
    if record.get("early_stop"):
        click.echo(f"stopped early at epoch {record['early_stop']['epoch']}: {record['early_stop']['reason']}")
    if record["status"] == "diverged":
        raise RunDiverged(f"run diverged at epoch {summary['diverged_at_epoch']} "
                          f"(loss or weights not finite); record marked 'diverged'")


def executor_options(func=None, deadline=True):
    """Where the work of ``grid``, ``search`` and ``robustness`` runs: local
    worker processes or a Slurm job array (``deadline``: with --deadline)."""
    if func is None:
        return lambda func: executor_options(func, deadline)
    executor = [
        click.option("--executor", type=RegistryChoice(executor_names), default="local", show_default=True,
                     help="local: worker processes here (--jobs); slurm: one Slurm job array through submitit "
                          "(pip install -e \".[slurm]\")."),
    ]
    stop = [
        click.option("--deadline", type=Duration(), default=None,
                     help="Stop by this much wall time (seconds, or 9m, 1h): no cell or epoch starts that would "
                          "end later, running cells stop at an epoch boundary with their checkpoint, and the same "
                          "command continues (local executor)."),
    ]
    slurm = [
        click.option("--slurm-partition", default=None, help="Slurm partition (default: the cluster's)."),
        click.option("--slurm-time", type=click.IntRange(min=1), default=60, show_default=True,
                     help="Time limit per task (a cell, a run's robustness), in minutes; a task that hits it is "
                          "requeued and resumes."),
        click.option("--slurm-gpus-per-task", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--slurm-cpus-per-task", type=click.IntRange(min=1), default=None),
        click.option("--slurm-mem", default=None, help="Memory per task, e.g. 16G."),
        click.option("--slurm-array-parallelism", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Tasks of the array running at once."),
        click.option("--slurm-opt", multiple=True, metavar="KEY=VALUE",
                     help="Passed to sbatch through submitit's slurm_additional_parameters, e.g. "
                          "--slurm-opt account=mylab --slurm-opt qos=high."),
    ]
    for option in reversed(executor + (stop if deadline else []) + slurm):
        func = option(func)
    return func


def checked_board(folder):
    """The --tensorboard folder, once tensorboard is known to be importable."""
    if folder:
        from benchmark.board import check_available
        check_available()
        check_out_dir(folder, "--tensorboard")
    return folder


def make_executor(name, options, device, jobs, threads, echo, wait=True, epoch_lines=True, tensorboard=None):
    """The chosen executor; pops its own options (``slurm_*``, ``deadline``) out of ``options``."""
    import time
    deadline = options.pop("deadline", None)
    deadline = time.time() + deadline if deadline else None
    from benchmark.cluster import SlurmOptions
    from benchmark.executors import ExecutorSettings
    from benchmark.executors import make_executor as build
    slurm = {k[len("slurm_"):]: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    slurm_options = SlurmOptions(partition=slurm["partition"], time_minutes=slurm["time"],
                                 gpus_per_task=slurm["gpus_per_task"], cpus_per_task=slurm["cpus_per_task"],
                                 mem=slurm["mem"], array_parallelism=slurm["array_parallelism"],
                                 extra=parse_key_values(slurm["opt"], "--slurm-opt"))
    return build(name, ExecutorSettings(device=device, jobs=jobs, threads=threads, echo=echo,
                                        epoch_lines=epoch_lines, tensorboard=checked_board(tensorboard),
                                        wait=wait, slurm=slurm_options, deadline=deadline))


def quiet_echo(quiet):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


@cli.command()
@click.option("--preset", type=RegistryChoice(preset_names),
              help="A named grid. bartunov-*: the paper's Table 1 cells (and every other rule); table1-*: one "
                   "block of the Table 1 campaign at length, with its own --epochs, --val-split, --seeds and "
                   "--out (values typed on the command line win).")
@click.option("--datasets", default=None, help="Comma-separated datasets (with --preset: a subset of its own).")
@click.option("--archs", default=None, help="Comma-separated architectures (with --preset: a subset of its own).")
@click.option("--algos", "rules", default=None,
              help="Comma-separated learning rules (with --preset: a subset of its own).")
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
                   "folder (repeatable), for --epochs, with seeds 1..--seeds (the trials ran seed 0, whose result "
                   "took part in the choice); every other setting is the search's.")
@training_options
def grid(preset, datasets, archs, rules, seeds, jobs, wait, status_dir, from_search, quiet, out, data_dir, device,
         rule_opt, threads, executor, tensorboard, **options):
    """Run a grid of runs; re-running the same command finishes only what is missing."""
    from benchmark.grid import grid_cells
    executor = make_executor(executor, options, device, jobs, threads, quiet_echo(quiet), wait=wait,
                             epoch_lines=not quiet, tensorboard=tensorboard)
    if from_search:
        cells = cells_from_search(from_search, seeds, options)
    else:
        from benchmark.grid import PRESETS, apply_preset, preset_option_names, select_grid
        chosen = select_grid(preset, datasets, archs, rules)
        typed = given_on_command_line(preset_option_names(preset))
        seeds, out, rule_settings = apply_preset(preset, options, seeds, out, typed)
        cells = grid_cells(chosen["datasets"], chosen["archs"], chosen["rules"], range(seeds), options,
                           parse_rule_options(rule_opt), rule_settings, PRESETS.get(preset, {}).get("rule_variants"))
    if status_dir is not None:
        from benchmark.cluster import grid_status
        check_folders("--status", [status_dir])
        selected = preset or datasets or archs or rules or from_search
        statuses = grid_status(status_dir, cells if selected else None)
        for status, names in statuses.items():
            click.echo(f"{status}: {len(names)}")
            for name in names:
                click.echo(f"  {name}")
        if selected:
            from benchmark.campaign import (
                campaign_markdown,
                campaign_rows,
                cell_records,
                convergence_markdown,
                convergence_rows,
            )
            records = cell_records(status_dir, cells)
            click.echo("\n" + campaign_markdown(campaign_rows(records, cells, statuses)))
            click.echo("\n" + convergence_markdown(convergence_rows(records, cells)))
        return
    if not from_search:
        from benchmark.grid import refuse_cells_no_network_takes
        refuse_cells_no_network_takes(cells)
    check_data_dir(data_dir)
    check_out_dir(out)
    try:
        counts = executor.run(cells, out, data_dir)
    except (KeyboardInterrupt, RunInterrupted):
        raise RunInterrupted("grid interrupted; rerun the same command to finish the missing "
                             "cells (interrupted ones resume from their checkpoints)") from None
    if counts.get("submitted"):
        return
    if counts.get("stopped") or counts.get("deferred"):
        click.echo(f"deadline reached: {counts.get('complete', 0)} cell(s) finished now, {counts.get('stopped', 0)} "
                   f"stopped at an epoch boundary (resumable), {counts.get('deferred', 0)} not started; continue "
                   f"with: {continue_command()}")
    else:
        click.echo("grid finished: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) if counts
                   else "grid finished: nothing to do")
    if counts.get("stale"):
        click.echo(f"{counts['stale']} cell(s) not run: their records ran with rule defaults that have changed "
                   f"since (see their lines above)", err=True)
    if counts.get("failed"):
        raise GridFailed(f"{counts['failed']} cell(s) failed; see error.txt in their run folders"
                         + (" and the Slurm logs" if executor.name == "slurm" else ""))


# What --from-search takes from the command line; every other setting is the search's.
FROM_SEARCH_OPTIONS = ("epochs", "patience")
GRID_SELECTION_OPTIONS = ("preset", "datasets", "archs", "rules", "rule_opt")


def cells_from_search(folders, seeds, options):
    from benchmark.records import find_searches
    from benchmark.search import chosen_configs
    ctx = click.get_current_context()
    refused = (set(options) - set(FROM_SEARCH_OPTIONS)) | set(GRID_SELECTION_OPTIONS)
    for param in ctx.command.params:
        if param.name in refused and given_on_command_line([param.name]):
            raise ConfigError(f"{param.opts[0]} cannot be combined with --from-search: the settings are the "
                              f"search's (only {', '.join('--' + o for o in FROM_SEARCH_OPTIONS)} apply)")
    check_folders("--from-search", folders)
    cells = chosen_configs(find_searches(folders), options["epochs"], seeds, options["patience"])
    if not cells:
        raise ConfigError(f"--from-search {', '.join(map(repr, folders))}: no finished search there (a "
                          f"search.json with a choice)")
    return cells


@cli.command()
@click.option("--arch", type=ArchChoice(arch_names), default="fc", show_default=True)
@click.option("--algo", "rule", type=RegistryChoice(rule_names), default="bp", show_default=True)
@click.option("--dataset", type=RegistryChoice(dataset_names), default="mnist", show_default=True)
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
def search(arch, rule, dataset, trials, search_seed, space_overrides, halving, min_epochs, final_seeds, jobs, quiet,
           out, data_dir, device, rule_opt, threads, executor, tensorboard, **options):
    """Random search of one (dataset, arch, rule) cell, chosen on the validation split
    (10% of the training set unless --val-split says otherwise; never the test set)."""
    from benchmark.search import plan_search
    echo = quiet_echo(quiet)
    # Each rung's choice needs its trials finished, so a Slurm search always waits.
    executor = make_executor(executor, options, device, jobs, threads, echo, wait=True, epoch_lines=False,
                             tensorboard=tensorboard)
    rule_options = parse_rule_options(rule_opt)
    job = plan_search(dataset, arch, rule, options, rule_options, parse_key_values(space_overrides, "--space"),
                      fixed=given_on_command_line(options) | set(rule_options), trials=trials,
                      epochs=options["epochs"], search_seed=search_seed, halving=halving, min_epochs=min_epochs,
                      final_seeds=final_seeds)
    check_data_dir(data_dir)
    check_out_dir(out)
    try:
        record = job.run(out, data_dir, executor=executor, echo=echo)
    except (RunInterrupted, KeyboardInterrupt):
        raise RunInterrupted("search interrupted; rerun the same command to go on (finished trials are "
                             "kept, interrupted ones resume from their checkpoints)") from None
    folder = job.folder(out)
    if record["status"] == "stopped":
        click.echo(f"deadline reached before the search could choose; its trials are kept (resumable); continue "
                   f"with: {continue_command()}")
        return
    if record["status"] != "complete":
        raise GridFailed(f"no trial finished with a validation error; see {folder}")
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
@click.option("--section", "sections", multiple=True, type=RegistryChoice(bench_section_names),
              help="Run only these sections (default: all).")
@click.option("--quick", is_flag=True, help="Tiny sizes, to check that the command works.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: all cores).")
@click.option("--family", "families", multiple=True, type=click.Choice(["mnist", "cifar10"]),
              help="Input families of the rules section (default: both).")
def bench(device, sections, quick, threads, families):
    """Measure the LC layer, the rules, the harness and the optimizer step; print Markdown tables."""
    import torch

    from benchmark.perf import run_bench
    from benchmark.run_model import resolve_device
    if threads:
        torch.set_num_threads(threads)
    run_bench(resolve_device(device), sections=sections or None, quick=quick, echo=click.echo,
              families=families or None)


def warn(message):
    click.echo(f"warning: {message}", err=True)


def _load_summary(runs, metric, seeds, strict, at_epoch=None):
    from benchmark.errors import RecordError, ResultsMissing
    from benchmark.results import load_runs
    from benchmark.tables import summarize_runs
    check_folders("--runs", runs)
    try:
        table, bad = load_runs(runs, strict=strict, warn=warn, at_epoch=at_epoch)
    except RecordError as exc:
        raise ResultsMissing(f"bad record (--strict): {exc}") from None
    if table.empty:
        raise ResultsMissing(f"no run records found under {', '.join(runs)}")
    if at_epoch and (table["status"] != "complete").all():
        raise ResultsMissing(f"--at-epoch {at_epoch}: no run under {', '.join(runs)} reached epoch {at_epoch} "
                             f"(the longest has {int(table['epochs_done'].max())})")
    return table, summarize_runs(table, metric=metric, seeds=seeds, warn=warn), bad


runs_option = click.option("--runs", multiple=True, type=click.Path(file_okay=False), default=[DEFAULT_OUT],
                           show_default=True, help="Folder(s) searched for run records (repeatable).")
metric_option = click.option("--metric", type=click.Choice(["best", "final", "val"]), default="best",
                             show_default=True,
                             help="best: best test error over epochs (paper); final: last epoch; "
                                  "val: test error at the best validation epoch.")


@cli.command()
@runs_option
@click.option("--metric", type=click.Choice(["best", "final", "val", "robust", "robust-best"]), default="best",
              show_default=True,
              help="best: best test error over epochs (paper); final: last epoch; val: test error at the best "
                   "validation epoch; robust / robust-best: adversarial and corruption error of the final / "
                   "best-validation models (cli.py robustness).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds expected per cell (cells with fewer are flagged); default: the most any cell has.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write table_METRIC.{md,csv,tex}, params.{md,csv,tex} and, when the folders hold "
                   "searches, chosen.{md,csv,tex} into this folder (robust metrics: robustness_STATE.{md,csv,tex}).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]), default="markdown",
              show_default=True, help="What to print.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on the first unreadable record instead of skipping it.")
@click.option("--at-epoch", "at_epoch", type=click.IntRange(min=1), default=None,
              help="Every run's numbers as they stood after this epoch (its curves cut there), so runs of "
                   "different lengths compare at equal training; shorter runs count as unfinished. Not with "
                   "the robust metrics (those evaluate the saved models).")
def table(runs, metric, seeds, out, fmt, strict, at_epoch):
    """Build the results and parameter-count tables from run records."""
    from benchmark import tables
    from benchmark.results import load_robustness, robustness_summary
    if metric in tables.ROBUST_METRICS:
        if at_epoch:
            raise click.UsageError(f"--at-epoch cannot be used with --metric {metric}: robustness is measured "
                                   f"on the saved models, not on the curves; allowed metrics: best, final, val")
        state = tables.ROBUST_METRICS[metric]
        runs_table, _, bad = _load_summary(runs, "best", seeds, strict)
        summary = robustness_summary(load_robustness(runs_table, warn), state)
        if summary.empty:
            raise ResultsMissing(f"no robustness results of {state} models under {', '.join(runs)} (run: python "
                                 f"cli.py robustness --runs {' '.join(runs)})")
        if out:
            check_out_dir(out)
            tables.write_robustness_tables(summary, state, out)
        click.echo(tables.robustness_text(summary, state, fmt), nl=False)
        return
    runs_table, summary, bad = _load_summary(runs, metric, seeds, strict, at_epoch)
    from benchmark.part_tables import part_angles, parts_markdown, write_part_tables
    parts = part_angles(runs_table)
    suffix = f"_at{at_epoch}" if at_epoch else ""
    if out:
        check_out_dir(out)
        tables.write_tables(summary, metric, out, suffix=suffix)
        if not parts.empty:
            write_part_tables(parts, out, suffix=suffix)
    from benchmark.records import find_searches
    chosen = tables.chosen_table(find_searches(runs))
    if out and not chosen.empty:
        tables.write_chosen(chosen, out)
    click.echo(tables.table_text(summary, metric, fmt), nl=False)
    if not parts.empty and fmt == "markdown":
        click.echo("\nAlignment per part of each transformer block:\n\n" + parts_markdown(parts), nl=False)
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
    from benchmark.records import find_searches
    table, summary, _ = _load_summary(runs, metric, None, False)
    check_out_dir(out)
    paths = plots.all_plots(table, summary, metric, out, find_searches(runs), warn)
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
    from models import RULES
    if algos:
        names = algos.split(",")
        for name in names:
            if name not in RULES:
                raise ConfigError(f"--algos: unknown learning rule {name!r}; allowed: {', '.join(RULES.names())}")
    elif runs:
        table, _, _ = _load_summary(runs, "best", None, False)
        names = sorted(set(table.rule))
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
    from benchmark.records import find_searches
    from benchmark.report import render
    table, summary, _ = _load_summary(runs, metric, None, False)
    check_out_dir(os.path.dirname(os.path.abspath(out)), "--out")
    write_text(out, render(table, summary, metric, find_searches(runs), title or ", ".join(runs), warn))
    click.echo(out)


@cli.command()
@click.option("--runs", multiple=True, type=click.Path(file_okay=False), default=[DEFAULT_OUT], show_default=True,
              help="Folder(s) whose complete runs are evaluated (repeatable); each result goes into its run folder.")
@click.option("--eps", "eps_text", default=None,
              help="L-inf budgets in pixel units [0, 1], comma-separated, fractions allowed (default: MNIST and "
                   "Fashion-MNIST 0,0.05,0.1,0.2,0.3; CIFAR-10 0,2/255,4/255,8/255,16/255).")
@click.option("--attacks", "attacks_text", default=",".join(robustness_settings.Settings.attacks), show_default=True,
              help=robustness_settings.attack_help())
@click.option("--gradients", "gradients_text", default=",".join(robustness_settings.GRADIENTS), show_default=True,
              help="Which gradient the attacks follow: true (exact), rule (the rule's backward path), transfer "
                   "(examples made on the BP run of the same dataset, arch and seed).")
@click.option("--corruptions", "corruptions_text", default=",".join(robustness_settings.Settings.corruptions),
              show_default=True, help="Corruptions at severities 1-5 (CIFAR-10-C parameters), or none.")
@click.option("--pgd-steps", type=click.IntRange(min=1), default=None,
              help="PGD and APGD-DLR iterations (default: MNIST 40, CIFAR-10 10; Madry et al. 2018).")
@click.option("--pgd-step", type=FiniteFloat(0, 1), default=None,
              help="PGD step in pixel units (default: MNIST 0.01, CIFAR-10 2/255).")
@click.option("--random-start/--no-random-start", default=True, show_default=True,
              help="PGD starts at a uniform random point of the eps ball.")
@click.option("--test-subset", type=click.IntRange(min=0), default=500, show_default=True,
              help="Evaluate on N test images, class-stratified and the same for every run (0: all); the time "
                   "is proportional to N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Images attacked at once (PGD runs batched).")
@click.option("--states", "states_text", default="final", show_default=True,
              help="Which kept models: final (last epoch), best (best validation epoch, where kept), or final,best "
                   "(twice the time).")
@click.option("--algos", "algos_text", default=None,
              help="Evaluate only the runs of these rules, comma-separated (BP runs still serve as transfer "
                   "sources), e.g. ep with a smaller --test-subset: EP relaxes at every gradient.")
@click.option("--skip-algos", "skip_text", default=None,
              help="Leave out the runs of these rules, comma-separated (e.g. ep, to evaluate it apart).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs evaluated in parallel worker processes.")
@executor_options(deadline=False)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per run (default: cores / --jobs).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar=DATA_ENV, default="data", show_default=True,
              help=f"torchvision data root (env {DATA_ENV}).")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
              help="Also add the results as scalars to each run's TensorBoard run in this folder, where it has one.")
def robustness(runs, eps_text, attacks_text, gradients_text, corruptions_text, pgd_steps, pgd_step, random_start,
               test_subset, batch_size, states_text, algos_text, skip_text, jobs, threads, device, data_dir,
               tensorboard, executor, **options):
    """Adversarial error (FGSM, PGD; true-gradient, rule-gradient and transfer
    attacks) and corruption error of every complete run, into its run folder."""
    settings = robustness_settings.Settings.from_options(
        eps_text, attacks_text, gradients_text, corruptions_text, states_text, algos_text, skip_text,
        pgd_steps=pgd_steps, pgd_step=pgd_step, random_start=random_start, test_subset=test_subset,
        batch_size=batch_size)
    settings.check_libraries()
    check_folders("--runs", runs)
    check_data_dir(data_dir)
    board = checked_board(tensorboard)

    def echo(message):
        click.echo(message, err=True)
    executor = make_executor(executor, options, device, jobs, threads, echo)
    from benchmark.robustness.jobs import evaluated, plan
    job_list = plan(runs, settings, warn=echo)
    if not job_list:
        raise ResultsMissing(f"no complete runs under {', '.join(runs)}")
    counts = executor.evaluate(job_list, settings, data_dir, runs[0])
    if board:  # every selected run with current results, so a later call can mirror runs evaluated before
        from benchmark.board import write_robustness
        mirrored = write_robustness(board, evaluated(job_list, settings))
        click.echo(f"tensorboard: robustness scalars added to {mirrored} run(s) under {board}")
    click.echo("robustness finished: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                                          or "nothing to do"))
    if counts.get("failed"):
        raise GridFailed(f"{counts['failed']} run(s) failed (see the lines above); the others are written")


@cli.command()
def rules():
    """Every learning rule, built-in or plug-in: source, title, citations, options."""
    from models import RULES
    for name in RULES.registered():
        rule = RULES.get(name)
        options = ", ".join(f"{k}={v}" for k, v in rule.defaults.items()) or "none"
        click.echo(f"{name}\n  source: {RULES.source(name)}\n  title: {rule.title or '(none)'}\n"
                   f"  cite: {', '.join(rule.citations) or '(none)'}\n  options: {options}")
        if rule.option_sources:
            for key, source in rule.option_sources.items():
                click.echo(f"    {key}: {source}")
        if rule.weight_transport:
            click.echo(f"  weight transport: {rule.weight_transport}")
        if rule.layer_kinds is not None:
            click.echo(f"  defined for: {', '.join(rule.layer_kinds)} layers")
        if rule.needs_chain:
            click.echo("  networks: chains of layers only (no residual connections or attention: not vit, "
                       "not ResNets)")
    for problem in RULES.problems:
        click.echo(f"problem: {problem}")


def main():
    from benchmark.runtime import tune_allocator
    tune_allocator()
    _install_sigterm()
    cli(prog_name="biobench")


if __name__ == "__main__":
    main()
