"""Which runs to evaluate: every complete run under the given folders, with
its kept models and its BP transfer source, and whether each is already
evaluated under these settings (its robustness.json's fingerprint)."""
import hashlib
import json
import os
from dataclasses import dataclass, field

from ..errors import RecordError
from ..records import BEST_MODEL_NAME, CHECKPOINT_NAME, find_records, load_record, read_robustness
from ..records import ROBUSTNESS_STATES as STATES
from .loading import file_digest, kept_models
from .transfer import assign_sources


@dataclass
class Job:
    """One run to evaluate: its folder, record, the model files it keeps and its BP transfer source."""
    run_dir: str
    record: dict = field(repr=False)
    models: dict  # state -> file name in run_dir
    source: str = None  # run folder of the BP network the transfer examples come from
    notes: list = field(default_factory=list)

    def __post_init__(self):
        from ..config import RunConfig
        self.config = RunConfig.from_record(self.record["config"])  # the record's fields by the code's names

    @property
    def name(self):
        return os.path.basename(self.run_dir)


def plan(roots, settings, warn=print):
    """Every complete run under ``roots`` as a :class:`Job`, checked before
    anything is written: ConfigError (one line) for a run folder without a
    kept model or a dataset without pixel bounds. Unfinished and diverged runs
    are left out (``warn`` says how many); so are unreadable records."""
    jobs, skipped, sources = [], {}, []
    for root in roots:
        for path in find_records(root):
            try:
                record = load_record(path)
            except RecordError as exc:
                warn(f"warning: skipped {exc}")
                continue
            if record["status"] != "complete":
                skipped[record["status"]] = skipped.get(record["status"], 0) + 1
                continue
            run_dir = os.path.dirname(path)
            job = Job(run_dir, record, {})
            if job.config.rule == "bp" and os.path.isfile(os.path.join(run_dir, CHECKPOINT_NAME)):
                sources.append(Job(run_dir, record, {"final": CHECKPOINT_NAME}))
            if (settings.rules and job.config.rule not in settings.rules) or job.config.rule in settings.skip_rules:
                continue
            settings.resolved(job.config.dataset)  # raises for a dataset without pixel bounds
            job.models = kept_models(run_dir, record, settings.states)
            if not job.models:
                skipped["without a best-validation model"] = skipped.get("without a best-validation model", 0) + 1
                continue
            if "best" in settings.states and "best" not in job.models:
                job.notes.append(f"best: no {BEST_MODEL_NAME} (no validation split, or trained before biobench "
                                 f"kept it)")
            jobs.append(job)
    for status, count in sorted(skipped.items()):
        warn(f"robustness: {count} {status} run(s) left out (only complete runs are evaluated)")
    seen, unique = set(), []
    for job in jobs:  # overlapping roots name a folder twice
        real = os.path.realpath(job.run_dir)
        if real not in seen:
            seen.add(real)
            unique.append(job)
    if "transfer" in settings.gradients:
        assign_sources(unique, sources)
    return unique


def fingerprint(job, settings):
    """What the numbers depend on: the settings, each model file and the transfer source's."""
    parts = {"settings": settings.resolved(job.config.dataset),
             "models": {state: file_digest(os.path.join(job.run_dir, name)) for state, name in job.models.items()}}
    if job.source:
        source_models = kept_models(job.source, load_record(os.path.join(job.source, "record.json")), STATES)
        parts["source"] = {state: file_digest(os.path.join(job.source, name)) for state, name in source_models.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def job_status(job, settings):
    """``done`` when the run's robustness.json has these settings and models,
    else ``todo``; RecordError (one line) for a file of the wrong shape, which
    a later evaluation could not merge with (see :func:`.evaluation.merge_earlier`)."""
    done = read_robustness(job.run_dir)
    return "done" if done is not None and done.get("fingerprint") == fingerprint(job, settings) else "todo"


def todo(jobs, settings):
    """The ``jobs`` not evaluated yet under ``settings``, BP runs first and
    each source's targets after it, so a worker that made a source's
    examples reuses them."""
    waiting = [job for job in jobs if job_status(job, settings) == "todo"]
    return sorted(waiting, key=lambda j: (j.config.rule != "bp", j.source or j.run_dir, j.run_dir))


def evaluated(jobs, settings):
    """The run folders of ``jobs`` whose robustness.json is current (these settings, these models)."""
    return [job.run_dir for job in jobs if job_status(job, settings) == "done"]
