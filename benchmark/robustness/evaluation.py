"""One run's evaluation, unit by unit: each (state, attack, gradient, eps)
and (state, corruption, severity) is a unit whose number is kept in
``robustness.partial.json`` as soon as it is known, so an interrupted
evaluation goes on where it stopped with the same numbers (each unit draws
from a seed of its own). The finished result goes into the run folder as
``robustness.json`` (atomic), merged with what an earlier call wrote there
and this one did not recompute (:func:`merge_earlier`).
"""
import os
import time

from ..errors import RecordError, RunError
from ..io import write_json
from ..records import BEST_MODEL_NAME, code_version, load_record, load_robustness_partial, read_robustness, versions
from ..records import ROBUSTNESS_CONFIG_KEYS as CONFIG_KEYS
from ..records import ROBUSTNESS_NAME as RESULT_NAME
from ..records import ROBUSTNESS_PARTIAL_NAME as PARTIAL_NAME
from ..records import ROBUSTNESS_SCHEMA as SCHEMA
from ..records import ROBUSTNESS_STATES as STATES
from . import attacks, corruptions, gradients, transfer
from .jobs import fingerprint
from .loading import dataset_of, file_digest, kept_models, load_checked_model, model_path
from .settings import GRADIENTS

TRUE_GRADIENT_TEXT = ("exact input gradient of the eval-mode network (autograd, every rule detached; EP: through "
                      "the unrolled free phase)")


def pixel_error(model, data, pixels, labels, batch_size):
    """Test error (%) of ``model`` (eval mode: EP relaxes) on pixels in [0, 1]."""
    import torch
    scale = (1.0 / (255.0 * data.std)).view(1, -1, 1, 1).to(pixels.device)
    shift = (data.mean / data.std).view(1, -1, 1, 1).to(pixels.device)
    wrong = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.addcmul(-shift, pixels[start:start + batch_size] * 255, scale)
            wrong += int((model(x).argmax(1) != labels[start:start + batch_size]).sum())
    return 100.0 * wrong / max(len(labels), 1)


class Evaluation:
    """Evaluates one job, unit by unit, keeping finished units in the partial file."""

    def __init__(self, job, settings, data_dir, device):
        self.job, self.data_dir, self.device = job, data_dir, device
        self.settings = settings.resolved(job.config.dataset)
        self.key = fingerprint(job, settings)
        self.partial_path = os.path.join(job.run_dir, PARTIAL_NAME)
        self.done = self._load_partial()
        self.reused = len(self.done)  # units an interrupted earlier call finished: their time is not this call's

    def _load_partial(self):
        """The units an interrupted call of these settings finished (none for other settings)."""
        if not os.path.exists(self.partial_path):
            return {}
        try:
            partial = load_robustness_partial(self.partial_path)
        except RecordError as exc:
            raise RecordError(f"{exc}; delete it to evaluate this run from the start") from None
        return partial["units"] if partial["fingerprint"] == self.key else {}

    def _unit(self, unit, compute):
        """The unit's number: from a finished earlier attempt, else computed and kept."""
        if unit not in self.done:
            started = time.time()
            self.done[unit] = {"error": compute(), "seconds": round(time.time() - started, 3)}
            write_json(self.partial_path, {"fingerprint": self.key, "units": self.done})
        return self.done[unit]["error"]

    def run(self):
        import torch

        from ..data import stratified_subset
        started = time.time()
        job, s = self.job, self.settings
        data = dataset_of(job.config.dataset, self.data_dir)
        if data.test.images.dtype != torch.uint8:
            raise RunError(f"dataset {job.config.dataset} does not hold 8-bit images, so it has no pixel bounds")
        whole_set = s["test_subset"] == 0 or s["test_subset"] >= len(data.test)
        test = (data.test if whole_set else data.test.subset(
            stratified_subset(data.test.labels, s["test_subset"], seed=s["subset_seed"]))).to(self.device)
        pixels, labels = test.images.float().div(255), test.labels  # the images every number here is measured on
        libraries = attacks.library_versions(s["attacks"])
        result = {"schema": SCHEMA, "run_id": job.name, "fingerprint": self.key,
                  "config": {key: job.record["config"][key] for key in CONFIG_KEYS},
                  "settings": s, "test_images": len(labels), "attack_library": ", ".join(libraries) or None,
                  "versions": {**versions(), **libraries}, "code": code_version(), "states": {},
                  "notes": list(job.notes)}
        for state, file_name in job.models.items():
            result["states"][state] = self._state(state, file_name, data, test, pixels, labels, whole_set,
                                                  result["notes"])
        by_kind = {}
        for unit, done in self.done.items():  # "state/attack/gradient/eps" or "state/corruption/name/severity"
            kind = unit.split("/")[1] if unit.split("/")[1] == "corruption" else unit.split("/")[2]
            by_kind[kind] = round(by_kind.get(kind, 0.0) + done["seconds"], 1)
        result["timing"] = {"seconds": round(time.time() - started, 1),
                            "unit_seconds": round(sum(u["seconds"] for u in self.done.values()), 1),
                            "units_from_earlier_calls": self.reused,
                            "seconds_by_kind": by_kind,
                            "device": str(self.device), "torch_threads": torch.get_num_threads()}
        result = merge_earlier(result, read_robustness(job.run_dir), job.run_dir)
        write_json(os.path.join(job.run_dir, RESULT_NAME), result)
        try:
            os.unlink(self.partial_path)
        except FileNotFoundError:
            pass
        return result

    def _state(self, state, file_name, data, test, pixels, labels, whole_set, notes):
        """The block of one kept model: its clean error, its attack rows (true,
        rule, transfer) and its corruption rows."""
        from models.layers import frozen_parameters

        from ..data import Normalizer
        from ..run_model import error_and_loss
        job, s, config = self.job, self.settings, self.job.config
        eval_batch = config.eval_batch_size
        model, rule, epoch, whole = load_checked_model(job.run_dir, job.record, state, data, self.data_dir,
                                                       self.device)
        normalizer = Normalizer(data.mean, data.std, self.device)
        clean = whole if whole_set else error_and_loss(model, test, normalizer, eval_batch)[0]
        model.eval()
        applicable, rule_text = gradients.rule_gradient(model, rule)
        if applicable and not rule.has_input_gradient_estimate:
            rule_text = f"{rule_text}; {gradients.give_input_feedback(model, rule, config.seed)}"
        entry = {"model_file": file_name, "epoch": epoch,
                 "sha256": file_digest(os.path.join(job.run_dir, file_name)), "clean_error": clean,
                 "gradients": {"true": TRUE_GRADIENT_TEXT, "rule": rule_text if applicable else None},
                 "attacks": [], "corruptions": []}
        if "rule" in s["gradients"] and not applicable:
            entry["rule_gradient_left_out"] = rule_text
        paths = [g for g in ("true", "rule") if g in s["gradients"] and (g == "true" or applicable)]
        with frozen_parameters(model.parameters()):
            for gradient in paths:
                module = gradients.attacked_model(model, rule, data, gradient)
                for attack in s["attacks"]:
                    if gradient == "rule" and not attacks.ATTACKS.get(attack).follows_gradient:
                        continue
                    for eps in s["eps"]:
                        unit = f"{state}/{attack}/{gradient}/{eps!r}"

                        def compute(attack=attack, eps=eps, module=module, unit=unit, gradient=gradient):
                            gradients.reseed(rule, gradients.unit_seed(config.seed, unit))
                            adv = attacks.adversarial(module, pixels, labels, attack, eps, s["pgd"], s["batch_size"])
                            if gradient == "true" and config.rule == "bp":  # a transfer source's examples
                                transfer.keep_examples(transfer.examples_path(job.run_dir, state, attack, eps, s), adv)
                            return pixel_error(model, data, adv, labels, eval_batch)
                        error = clean if eps == 0 else self._unit(unit, compute)
                        entry["attacks"].append({"attack": attack, "gradient": gradient, "eps": eps, "error": error})
            if "transfer" in s["gradients"] and job.source:
                source = self._transfer(entry, state, model, data, pixels, labels, eval_batch, clean)
                if source is None:
                    notes.append(f"transfer ({state}): the BP run {os.path.basename(job.source)} keeps no "
                                 f"{BEST_MODEL_NAME}, and its final model is not this state's")
                else:
                    entry["transfer_source"] = source
        for name, levels in s["corruptions"].items():
            for severity, level in enumerate(levels, start=1):
                unit = f"{state}/corruption/{name}/{severity}"

                def compute(name=name, level=level, unit=unit):
                    gradients.reseed(rule, gradients.unit_seed(config.seed, unit))
                    return pixel_error(model, data, corruptions.corrupt(pixels, name, level), labels, eval_batch)
                entry["corruptions"].append({"corruption": name, "severity": severity, "level": level,
                                             "error": self._unit(unit, compute)})
        return entry

    def _transfer(self, entry, state, model, data, pixels, labels, eval_batch, clean):
        """Errors of ``model`` on the adversarial examples of the BP source's
        model of the same ``state``, checked against the source's record first;
        returns the source's description, or None when it keeps no such model."""
        source_dir = self.job.source
        source_record = load_record(os.path.join(source_dir, "record.json"))
        source_models = kept_models(source_dir, source_record, STATES)
        if state not in source_models:
            return None
        try:
            transfer.source_model(source_dir, source_record, state, self.data_dir, self.device)
        except RunError as exc:
            raise RunError(f"transfer source of {self.job.name}: {exc}") from None
        for attack in self.settings["attacks"]:
            for eps in self.settings["eps"]:
                unit = f"{state}/{attack}/transfer/{eps!r}"

                def compute(attack=attack, eps=eps):
                    adv = transfer.source_examples(source_dir, source_record, state, attack, eps, self.settings,
                                                   self.data_dir, self.device, pixels, labels)
                    return pixel_error(model, data, adv, labels, eval_batch)
                error = clean if eps == 0 else self._unit(unit, compute)
                entry["attacks"].append({"attack": attack, "gradient": "transfer", "eps": eps, "error": error})
        return {"run_id": os.path.basename(source_dir), "state": state, "model_file": source_models[state],
                "sha256": file_digest(os.path.join(source_dir, source_models[state]))}


# The settings that decide a row's number besides the model and the row's own
# (attack, gradient, eps): rows made under other values are never kept beside new ones.
PROTOCOL_KEYS = ("norm", "pixel_range", "pgd", "test_subset", "subset_seed", "batch_size")


def merge_earlier(result, earlier, run_dir):
    """``result`` (this call's) with what the run's ``earlier``
    robustness.json holds and this call did not recompute (other states,
    attacks, gradients, eps, corruptions), so a narrower call never drops
    results: kept where they were measured with the same protocol
    (``PROTOCOL_KEYS``) on the model file still there, transfer rows only
    from this call's source or when this call had none. Notes say what was
    kept or dropped."""
    if earlier is None:
        return result
    old_settings, notes = earlier.get("settings", {}), result["notes"]
    if any(old_settings.get(key) != result["settings"][key] for key in PROTOCOL_KEYS):
        notes.append(f"earlier results made with other settings ({', '.join(PROTOCOL_KEYS)}) were replaced")
        return result
    kept_any = False
    for state, old in earlier["states"].items():
        path = model_path(run_dir, state)
        if not os.path.exists(path) or old.get("sha256") != file_digest(path):
            if state not in result["states"]:
                notes.append(f"{state}: earlier results of another model file were dropped")
            continue
        if state not in result["states"]:
            result["states"][state] = old
            notes.append(f"{state}: kept from an earlier call")
            kept_any = True
            continue
        kinds = _keep_rows(result["states"][state], old)
        if kinds:
            notes.append(f"{state}: {', '.join(kinds)} rows kept from an earlier call")
            kept_any = True
    if kept_any:
        result["settings"] = merged_settings(result["settings"], old_settings, result["states"])
        result["states"] = {state: result["states"][state] for state in STATES if state in result["states"]}
    return result


def _keep_rows(entry, old):
    """Add to ``entry`` (one state, this call's) the rows of ``old`` (the same
    state, earlier) it has not; returns their kinds (gradients, corruption)."""
    same_source = entry.get("transfer_source") in (None, old.get("transfer_source"))
    have = {(r["attack"], r["gradient"], r["eps"]) for r in entry["attacks"]}
    attack_rows = [r for r in old.get("attacks", []) if (r["attack"], r["gradient"], r["eps"]) not in have
                   and (r["gradient"] != "transfer" or same_source)]
    if any(r["gradient"] == "transfer" for r in attack_rows) and "transfer_source" in old:
        entry["transfer_source"] = old["transfer_source"]
    have = {(r["corruption"], r["severity"]) for r in entry["corruptions"]}
    corruption_rows = [r for r in old.get("corruptions", []) if (r["corruption"], r["severity"]) not in have]
    entry["attacks"] += attack_rows
    entry["corruptions"] += corruption_rows
    return sorted({r["gradient"] for r in attack_rows}) + (["corruption"] if corruption_rows else [])


def merged_settings(new, old, states):
    """``new`` with the lists of ``old`` added (this call's first), the states
    those in ``states``; the rows of ``states`` sorted as one call writes them."""
    def union(first, second):
        return list(dict.fromkeys([*first, *second]))
    levels = {**old.get("corruptions", {}), **new["corruptions"]}
    merged = dict(new, eps=sorted(set(new["eps"]) | set(old.get("eps", []))),
                  attacks=union(new["attacks"], old.get("attacks", [])),
                  gradients=union(new["gradients"], old.get("gradients", [])),
                  corruptions={name: levels[name] for name in union(new["corruptions"], old.get("corruptions", {}))},
                  states=[state for state in STATES if state in states])
    attack_order = {name: i for i, name in enumerate(merged["attacks"])}
    corruption_order = {name: i for i, name in enumerate(merged["corruptions"])}
    for entry in states.values():
        entry["attacks"].sort(key=lambda r: (GRADIENTS.index(r["gradient"]) if r["gradient"] in GRADIENTS
                                             else len(GRADIENTS), attack_order.get(r["attack"], 0), r["eps"]))
        entry["corruptions"].sort(key=lambda r: (corruption_order.get(r["corruption"], 0), r["severity"]))
    return merged
