"""Early stopping on the validation split (``--patience``)."""


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
