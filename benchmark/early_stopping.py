"""When a run stops before its last epoch: early stopping on the validation
split (``--patience``), and the deadline of a grid or search (``--deadline``)."""
import time


def early_stop(curves, patience):
    """``{epoch, best_val_epoch, patience, reason}`` once validation error has
    not improved on its best for ``patience`` epochs, else None."""
    val = curves["val_error"]
    if not patience or not val or val[-1] is None:
        return None
    best = val.index(min(val))
    if len(val) - 1 - best < patience:
        return None
    return {"epoch": curves["epoch"][-1], "best_val_epoch": curves["epoch"][best], "patience": patience,
            "reason": f"validation error did not improve for {patience} epoch(s) after epoch "
                      f"{curves['epoch'][best]}"}


def fits_before(deadline, record, estimate=None):
    """Whether one more epoch, as long as this run's epochs so far (evaluation
    and checkpoint included) or else ``estimate``, ends before ``deadline``."""
    if deadline is None:
        return True
    done = record["summary"]["epochs_done"]
    per_epoch = record["wall_seconds"] / done if done else estimate
    return time.time() + (per_epoch or 0.0) < deadline
