"""TensorBoard view of runs: per-epoch curves and per-layer alignment as
scalars, one TensorBoard run per biobench run (named like its folder). The
records stay the source of truth; this only mirrors them."""
import math
import os

from .errors import BoardError

CURVES = {"train_loss": "loss/train", "test_loss": "loss/test", "train_error": "error/train",
          "test_error": "error/test", "val_error": "error/val", "seconds": "time/epoch_seconds"}
LAYER_METRICS = ("update_angle", "wb_angle", "norm_ratio", "reconstruction_error", "target_distance",
                 "nudge_distance", "free_residual", "energy_before", "energy_after", "goodness_positive",
                 "goodness_negative")




def check_available():
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise BoardError("--tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\"") from None


class Board:
    """Writes one run's epochs; ``first_epoch`` drops events an interrupted
    attempt wrote beyond the checkpoint the run resumes from."""

    def __init__(self, directory, run_dir, first_epoch):
        check_available()
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=os.path.join(directory, os.path.basename(os.path.normpath(run_dir))),
                                    purge_step=first_epoch)

    def write_epoch(self, record):
        curves = record["curves"]
        epoch = curves["epoch"][-1]
        for key, tag in CURVES.items():
            value = curves[key][-1]
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, epoch)
        for layer in record["alignment"][-1]["layers"]:
            for key in LAYER_METRICS:
                value = layer.get(key)
                if value is not None:
                    self.writer.add_scalar(f"layer{layer['layer'] + 1}/{key}", value, epoch)
        self.writer.flush()

    def close(self):
        self.writer.close()


def write_robustness(directory, run_dirs):
    """Add each run's robustness.json as scalars to its TensorBoard run in
    ``directory`` (only runs that have one: this mirrors, it creates no run).
    Tags ``robustness_<state>/<attack>_<gradient>`` and
    ``robustness_<state>/corruption_<name>`` carry the error, the step being
    eps x 1000 (or the severity): TensorBoard's x axis then reads as eps.
    Returns how many runs were mirrored."""
    from .records import read_robustness
    check_available()
    from torch.utils.tensorboard import SummaryWriter
    mirrored = 0
    for run_dir in run_dirs:
        board_run = os.path.join(directory, os.path.basename(os.path.normpath(run_dir)))
        if not os.path.isdir(board_run):
            continue
        result = read_robustness(run_dir)  # RecordError (one line) for a file of the wrong shape
        if result is None:
            continue
        writer = SummaryWriter(log_dir=board_run)
        for state, entry in result["states"].items():
            for row in entry.get("attacks", []):
                writer.add_scalar(f"robustness_{state}/{row['attack']}_{row['gradient']}", row["error"],
                                  round(row["eps"] * 1000))
            for row in entry.get("corruptions", []):
                writer.add_scalar(f"robustness_{state}/corruption_{row['corruption']}", row["error"], row["severity"])
        writer.close()
        mirrored += 1
    return mirrored
