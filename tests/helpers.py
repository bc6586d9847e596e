"""Helpers the tests share: tiny datasets in MNIST's format, fixture records,
and what of a record must match between two runs that should be equal."""
import json
import os
import signal
import struct
import subprocess

import torch

from benchmark.records import SCHEMA


def write_idx_images(path, images):
    n, h, w = images.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w))
        f.write(images.to(torch.uint8).numpy().tobytes())


def write_idx_labels(path, labels):
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, labels.shape[0]))
        f.write(labels.to(torch.uint8).numpy().tobytes())


def make_tiny_mnist(root, folder="MNIST", n_train=96, n_test=48, seed=0):
    """A learnable 10-class toy in MNIST's raw IDX format: each class lights
    up its own band of the 28x28 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, label in enumerate(labels.tolist()):
            images[i, 2 * label + 4:2 * label + 7, 4:24] += 180
        write_idx_images(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images.clamp(0, 255))
        write_idx_labels(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root


def comparable(record):
    """What must be equal in the records of two runs that should be the same
    run (wall-clock seconds aside)."""
    curves = {k: v for k, v in record["curves"].items() if k != "seconds"}
    return curves, record["summary"], record["alignment"], record["params"], record["status"]


def records_in(out):
    """``{run folder name: record}`` of every run folder directly under ``out``."""
    return {f: json.load(open(os.path.join(out, f, "record.json"))) for f in sorted(os.listdir(out))
            if os.path.exists(os.path.join(out, f, "record.json"))}


def fake_record(dataset, arch, algo, seed, errors, status="complete", val=None, epochs_asked=None, **config):
    epochs = list(range(1, len(errors) + 1))
    val = val or [None] * len(errors)
    summary = {"epochs_done": len(errors), "final_test_error": errors[-1], "best_test_error": min(errors),
               "best_test_epoch": errors.index(min(errors)) + 1, "final_train_error": 0.0,
               "best_val_epoch": None, "test_error_at_best_val": None, "diverged_at_epoch": None}
    if val[0] is not None:
        best = val.index(min(val))
        summary.update(best_val_epoch=best + 1, test_error_at_best_val=errors[best])
    layers = [{"layer": i, "wb_angle": None if i == 0 else 80.0 - e, "update_angle": 40.0 + i,
               "norm_ratio": None if i == 0 else 1.0} for i in range(3) for e in [0]]
    return {
        "schema": SCHEMA, "status": status, "run_id": f"{dataset}-{arch}-{algo}-{seed}",
        "config": {"dataset": dataset, "arch": arch, "algo": algo, "seed": seed,
                   "epochs": epochs_asked or len(errors), **config},
        "seed": seed, "summary": summary,
        "params": {"forward_total": {"fc": 1000, "lc": 5000, "conv": 2000}[arch],
                   "feedback_total": 0 if algo == "bp" else 900,
                   "per_layer": [{"layer": i} for i in range(3)]},
        "curves": {"epoch": epochs, "test_error": errors, "train_error": errors, "train_loss": errors,
                   "test_loss": errors, "val_error": val, "seconds": [1.0] * len(errors)},
        "alignment": [{"epoch": e, "layers": layers} for e in epochs],
    }


def attach_tp_rule(name, model, input_size, seed=1, **options):
    """A target-propagation rule on ``model`` whose inverses' biases are
    non-zero (they start at zero; random ones make them count in checks)."""
    import torch

    from models import make_rule
    rule = make_rule(name, **options).attach(model, torch.Generator().manual_seed(seed), (input_size,))
    rule.moved_to("cpu")
    with torch.no_grad():
        for inverse in rule.feedback.inverses.values():
            inverse.bias.normal_()
    return rule


def chain_batch(width):
    """Six samples of ``width`` features and three classes, always the same."""
    import torch
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, width, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])


def run_process_group(args, timeout, **kwargs):
    """subprocess.run for a command that starts processes of its own (a grid's
    workers): on timeout the whole group is killed, so the test fails with the
    output so far instead of hanging on pipes a grandchild still holds."""
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{args} ran past {timeout} s:\n{stdout}{stderr}") from None
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
