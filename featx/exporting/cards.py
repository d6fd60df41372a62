"""A model's card written again with what featx has measured of it since: robustness and split shift."""

from __future__ import annotations

from pathlib import Path

from ..artifacts.format import checked_sidecar
from ..artifacts.model_card import write_model_card
from ..artifacts.sidecar import Sidecar
from ..studies.robustness import saved_robustness
from ..studies.shift import recorded_shift


def refresh_card(artifact, *, intended_use: str | None = None, limitations: str | None = None) -> Path:
    """Write `<model>.md` with the robustness rows `featx robustness` saved for this model's method and
    dataset, and the shift `featx shift` recorded on its features into test (or val)."""
    artifact = Path(artifact)
    sidecar = Sidecar.from_json(checked_sidecar(artifact))
    rows = []
    for models_dir in dict.fromkeys((artifact.parent, artifact.parent.parent)):  # a head, or a fine-tune's run folder
        for split in ("test", "val"):
            saved = saved_robustness(models_dir, split, sidecar.data_root)
            if saved and not any(r.get("split") == split for r in rows):
                rows += [{**r, "split": split} for r in saved.rows if r["method"] == sidecar.method.label]
    shift = None
    cache = sidecar.raw["features"].get("file")
    for split in ("test", "val"):
        found = recorded_shift(cache, split) if cache and Path(cache).exists() else None
        if found:
            start, record = found
            low, high = record["ci"]
            shift = [f"{start} -> {split}: domain ROC-AUC {record['auc']:.3f} [{low:.3f}, {high:.3f}] on the backbone's "
                     "features (0.5: the splits look alike to the features; 1: every image betrays its split)"]
            break
    return write_model_card(artifact, robustness=rows or None, shift=shift, intended_use=intended_use,
                            limitations=limitations)
