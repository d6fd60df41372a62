"""`featx predict`: run a saved model on image files, with the backbone and preprocessing it was trained on."""

from __future__ import annotations

from pathlib import Path

from .._core.atomic import write_csv_atomic
from .._core.options import check_options
from ..data.datasets import image_files
from .predictors import load


def predict(model, images, *, weights: str = "auto", device: str = "auto", batch_size: int | None = None,
            output=None, progress: bool = False) -> list[dict]:
    """One record per image: path, `p_<class>` probabilities, the predicted class, and an error if unreadable;
    for a model `featx calibrate` gave prediction sets, also its set ("PNEUMONIA", "NORMAL or PNEUMONIA: not sure").

    `model` is an artifact path or a loaded model (`featx.load`): a head or a fine-tuned network; `images` are files or folders.
    Unreadable images are kept in the output with their reason, never dropped.
    """
    check_options(device=device, batch_size=batch_size)
    if isinstance(model, (str, Path)):
        model = load(model)
    paths = image_files([images] if isinstance(images, (str, Path)) else images)
    proba, reasons = model.image_proba(paths, weights=weights, device=device, batch_size=batch_size,
                                       progress=progress)
    ok = [i for i, r in enumerate(reasons) if r is None]
    predicted = model.decide(proba[ok]) if ok else []
    sets = model.prediction_sets(proba)
    with_sets = bool(model.local and model.local.sets)
    classes = [str(c) for c in model.classes_]
    rows = []
    for path, reason in zip(paths, reasons):
        rows.append({"path": str(path), **{f"p_{c}": None for c in classes}, "predicted": None,
                     **({"set": None} if with_sets else {}), "error": reason})
    for j, i in enumerate(ok):
        rows[i].update({f"p_{c}": float(p) for c, p in zip(classes, proba[i])}, predicted=str(predicted[j]))
        if with_sets:
            rows[i]["set"] = sets[i]
    if output:
        write_csv_atomic(output, rows)
    return rows
