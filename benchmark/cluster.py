"""Grid cells, and robustness evaluations, as a Slurm job array, through submitit.

The run folders stay the single source of truth: a cell is done when its
record says ``complete`` or ``diverged`` (many clusters have no ``sacct``),
so submitting a grid again submits only the cells that are missing or
resumable and not already queued. Each cell is a checkpointable callable: on
preemption or time-out submitit calls ``checkpoint()``, which requeues the same
cell, and the requeued task resumes from the cell's own epoch checkpoint (the
``--resume`` path, exact). The record counts the requeues
(``slurm.requeues``, from ``SLURM_RESTART_COUNT``). A robustness evaluation
is one task per run in the same way: requeued, it goes on from the units its
``robustness.partial.json`` keeps; it is done when the run's robustness.json
has the settings' fingerprint.

submitit is imported only here, only when the Slurm executor is asked for.
"""
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime

from .errors import ClusterError
from .grid import ERROR_NAME, TERMINAL, cell_state, run_cell
from .locks import LOCK_NAME, RunLock
from .records import CHECKPOINT_NAME, RECORD_NAME, run_folders
from .robustness.jobs import job_status, todo
from .robustness.runner import evaluate_job

LOGS = "slurm-logs"


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ClusterError("--executor slurm needs submitit: pip install -e \".[slurm]\"") from None
    return submitit


def slurm_environment():
    """This task's Slurm ids and how often it was requeued (None outside Slurm)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {"job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"]),
            "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "requeues": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}


def tolerate_requeue_race(submitit):
    """Make submitit's requeue survive its own success. ``scontrol requeue``
    has Slurm stop this task at once; when that SIGTERM reaches scontrol
    before it returns, submitit raises CalledProcessError (-SIGTERM) into the
    training loop although the job was requeued, and the cell was recorded as
    failed (seen once in CI, in the preemption test)."""
    environment = submitit.slurm.slurm.SlurmJobEnvironment
    original = environment._requeue
    if getattr(original, "tolerates_race", False):
        return

    def requeue(self, countdown):
        try:
            original(self, countdown)
        except subprocess.CalledProcessError as exc:
            if exc.returncode != -signal.SIGTERM:
                raise
    requeue.tolerates_race = True
    environment._requeue = requeue


def make_cell_task():
    submitit = import_submitit()

    class CellTask(submitit.helpers.Checkpointable):
        """One grid cell in a Slurm task. ``checkpoint()`` (inherited) requeues
        the same call; the cell then resumes from its epoch checkpoint."""

        def __call__(self, config_dict, out, data_dir, device, threads, tensorboard=None):
            tolerate_requeue_race(submitit)
            return run_cell(config_dict, out, data_dir, device, threads, epoch_lines=True,
                            notes={"slurm": slurm_environment()}, tensorboard=tensorboard)

    return CellTask()


def make_evaluation_task():
    submitit = import_submitit()

    class EvaluationTask(submitit.helpers.Checkpointable):
        """One run's robustness evaluation in a Slurm task. ``checkpoint()``
        (inherited) requeues the same call; it then goes on from the units
        its robustness.partial.json keeps."""

        def __call__(self, job, settings, data_dir, device, threads):
            tolerate_requeue_race(submitit)
            return evaluate_job(job, settings, data_dir, device, threads)

    return EvaluationTask()


@dataclasses.dataclass
class SlurmOptions:
    partition: str = None
    time_minutes: int = 60
    gpus_per_task: int = 0
    cpus_per_task: int = None
    mem: str = None
    array_parallelism: int = 256
    extra: dict = dataclasses.field(default_factory=dict)  # slurm_additional_parameters


def queued_tasks(job_ids):
    """``{"JOB_TASK", ...}`` of the given array jobs still pending or running (squeue, not sacct)."""
    if not job_ids:
        return set()
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(job_ids)],
                            capture_output=True, text=True)
    return set(result.stdout.split()) if result.returncode == 0 else set()


def submitted_elsewhere(out):
    """Cells already queued by an earlier submission: ``{run name: "JOB_TASK"}``."""
    path = os.path.join(out, LOGS, "submitted.tsv")
    if not os.path.exists(path):
        return {}
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            name, task = line.rstrip("\n").split("\t")
            entries[name] = task
    alive = queued_tasks(sorted({t.split("_")[0] for t in entries.values()}))
    return {name: task for name, task in entries.items() if task in alive}


def _submit_array(task, arguments, names, out, options, job_name):
    """Submit ``task`` over ``arguments`` (one list per parameter, one entry
    per task) as one job array, its logs under ``out``/slurm-logs, and note
    each task's ``names`` entry as queued (:func:`submitted_elsewhere`).
    Returns the submitit jobs."""
    submitit = import_submitit()
    folder = os.path.join(out, LOGS, datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    executor = submitit.SlurmExecutor(folder=os.path.join(folder, "%j"), max_num_timeout=100)
    parameters = {"time": options.time_minutes, "array_parallelism": options.array_parallelism,
                  "job_name": job_name, "additional_parameters": dict(options.extra)}
    for key, value in (("partition", options.partition), ("gpus_per_task", options.gpus_per_task or None),
                       ("cpus_per_task", options.cpus_per_task), ("mem", options.mem)):
        if value is not None:
            parameters[key] = value
    executor.update_parameters(**parameters)
    try:
        jobs = executor.map_array(task, *arguments)
    except Exception as exc:  # sbatch refused or failed: leave nothing behind
        shutil.rmtree(folder, ignore_errors=True)
        message = str(exc).strip().splitlines()
        raise ClusterError(f"Slurm refused the submission: {message[-1] if message else type(exc).__name__}") \
            from None
    with open(os.path.join(out, LOGS, "submitted.tsv"), "a", encoding="utf-8") as handle:
        for name, job in zip(names, jobs):
            handle.write(f"{name}\t{job.job_id}\n")
    return jobs


def _check_sbatch():
    if not shutil.which("sbatch"):
        raise ClusterError("--executor slurm: no sbatch on this machine's PATH (is this a Slurm login node?)")
    import_submitit()


def submit(cells, out, data_dir, device, threads, options, echo=print, tensorboard=None):
    """Submit the cells that are not done and not queued as one job array.
    Returns ``(submitted cells, jobs, skipped count)``."""
    _check_sbatch()
    out, data_dir = os.path.abspath(out), os.path.abspath(data_dir)
    os.makedirs(out, exist_ok=True)
    queued = submitted_elsewhere(out)
    todo_cells = [c for c in cells if cell_state(os.path.join(out, c.run_name()), c.epochs, c) not in TERMINAL
                  and c.run_name() not in queued]
    skipped = len(cells) - len(todo_cells)
    if not todo_cells:
        return [], [], skipped
    for cell in todo_cells:  # a previous attempt's failure note must not count for this one
        stale = os.path.join(out, cell.run_name(), ERROR_NAME)
        if os.path.exists(stale):
            os.unlink(stale)
    board = os.path.abspath(tensorboard) if tensorboard else None
    count = len(todo_cells)
    jobs = _submit_array(make_cell_task(), [[c.as_record() for c in todo_cells], [out] * count, [data_dir] * count,
                                            [device] * count, [threads] * count, [board] * count],
                         [c.run_name() for c in todo_cells], out, options, "biobench-grid")
    return todo_cells, jobs, skipped


def _evaluation_name(job):
    """How submitted.tsv names a run's robustness task (a grid cell's name is its folder's)."""
    return f"robustness:{os.path.realpath(job.run_dir)}"


def submit_evaluations(jobs, settings, out, data_dir, device, threads, options):
    """Submit the robustness jobs not evaluated yet under ``settings`` and
    not queued as one job array, its logs under ``out``/slurm-logs.
    Returns ``(submitted jobs, submitit jobs, skipped count)``."""
    _check_sbatch()
    out, data_dir = os.path.abspath(out), os.path.abspath(data_dir)
    os.makedirs(out, exist_ok=True)
    queued = submitted_elsewhere(out)
    waiting = [job for job in todo(jobs, settings) if _evaluation_name(job) not in queued]
    skipped = len(jobs) - len(waiting)
    if not waiting:
        return [], [], skipped
    # the tasks may start in another folder: every path absolute
    waiting = [dataclasses.replace(job, run_dir=os.path.abspath(job.run_dir),
                                   source=os.path.abspath(job.source) if job.source else None) for job in waiting]
    count = len(waiting)
    tasks = _submit_array(make_evaluation_task(), [waiting, [settings] * count, [data_dir] * count,
                                                   [device] * count, [threads] * count],
                          [_evaluation_name(job) for job in waiting], out, options, "biobench-robustness")
    return waiting, tasks, skipped


def _wait_for(pending, ended, echo, poll_seconds):
    """Block until every ``pending`` entry (``{name: (item, submitit job)}``)
    has ended, by ``ended(item, job, alive)`` (``(status, note)``, or None
    while it has not; ``alive``: the queued tasks); one line per ended entry.
    Returns {status: count}."""
    total, counts, started = len(pending), {}, time.time()
    while pending:
        alive = queued_tasks(sorted({j.job_id.split("_")[0] for _, j in pending.values()}))
        for name, (item, job) in list(pending.items()):
            outcome = ended(item, job, alive)
            if outcome is None:
                continue
            status, note = outcome
            del pending[name]
            counts[status] = counts.get(status, 0) + 1
            done = sum(counts.values())
            echo(f"[{done}/{total}] {name}: {status}{': ' + note if note else ''}  "
                 f"(elapsed {(time.time() - started) / 60:.1f} min)")
        if pending:
            time.sleep(poll_seconds)
    return counts


def wait(cells, jobs, out, echo=print, poll_seconds=2.0):
    """Block until every submitted cell has ended; returns {status: count}.
    A cell ended when its record is complete or diverged, when it left an
    error note, or when its task left the queue without either (failed)."""
    out = os.path.abspath(out)

    def ended(cell, job, alive):
        run_dir = os.path.join(out, cell.run_name())
        state = cell_state(run_dir, cell.epochs)
        if state in TERMINAL:
            return state, ""
        if os.path.exists(os.path.join(run_dir, ERROR_NAME)):
            return "failed", f"see {job.paths.stdout} and {os.path.join(run_dir, ERROR_NAME)}"
        if job.job_id not in alive and _task_finished(job):
            return "failed", f"the task ended without a record; see {job.paths.stdout}"
        return None
    return _wait_for({c.run_name(): (c, j) for c, j in zip(cells, jobs)}, ended, echo, poll_seconds)


def wait_evaluations(jobs, tasks, settings, echo=print, poll_seconds=2.0):
    """Block until every submitted robustness job has ended; returns
    {status: count}. A job ended when its robustness.json has the settings'
    fingerprint (evaluated), when its task returned (its own status and
    line: failed, busy), or when the task left the queue without either."""
    def ended(job, task, alive):
        if job_status(job, settings) == "done":
            return "evaluated", ""
        if task.paths.result_pickle.exists():
            try:
                _, status, message = task.result()
            except Exception:  # the task raised (submitit keeps the traceback in its log)
                return "failed", f"see {task.paths.stdout}"
            return status, message
        if task.job_id not in alive and _task_finished(task):
            return "failed", f"the task ended without a result; see {task.paths.stdout}"
        return None
    return _wait_for({job.name: (job, task) for job, task in zip(jobs, tasks)}, ended, echo, poll_seconds)


def _task_finished(job):
    """A task out of the queue may still be between requeues: give it a moment."""
    time.sleep(1.0)
    return job.job_id not in queued_tasks([job.job_id.split("_")[0]])


STATUS_ORDER = ("complete", "running", "resumable", "failed", "diverged", "missing")
# What a cell leaves in its folder at any stage; a folder with none of them
# (plots/, tables/ written beside the runs) is not a run.
_RUN_FILES = (RECORD_NAME, CHECKPOINT_NAME, LOCK_NAME, ERROR_NAME)


def _holds_a_run(folder):
    return any(os.path.exists(os.path.join(folder, name)) for name in _RUN_FILES)


def grid_status(out, cells=None):
    """``{status: [run names]}`` from the run folders under ``out`` (and the
    expected ``cells``, which adds the missing ones)."""
    names = set()
    if os.path.isdir(out):
        names = {name for name in run_folders(out) if name != LOGS and _holds_a_run(os.path.join(out, name))}
    wanted = {c.run_name(): c.epochs for c in cells or []}
    queued = submitted_elsewhere(out) if os.path.isdir(os.path.join(out, LOGS)) else {}
    result = {status: [] for status in STATUS_ORDER}
    for name in sorted(names | set(wanted)):
        run_dir = os.path.join(out, name)
        state = cell_state(run_dir, wanted.get(name, 0))
        if state not in TERMINAL and (name in queued or RunLock(run_dir).held()):
            state = "running"  # queued or training
        elif state not in TERMINAL and os.path.exists(os.path.join(run_dir, ERROR_NAME)):
            state = "failed"
        result[state].append(name)
    return result
