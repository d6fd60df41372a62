"""A model's card written again with what featx has measured of it since: robustness and split shift."""

from __future__ import annotations

from pathlib import Path

from .._core.paths import default_cache_dir
from ..artifacts.catalogue import artifacts_of_dataset, find_artifacts
from ..artifacts.format import checked_sidecar
from ..artifacts.model_card import write_model_card
from ..artifacts.sidecar import Sidecar
from ..evaluation.sets import EVALUATED
from .measurements import saved_robustness
from .shift import recorded_shift


def refresh_card(artifact, *, intended_use: str | None = None, limitations: str | None = None) -> Path:
    """Write `<model>.md` with the robustness rows `featx robustness` saved for this very model (its file's
    sha256), and the shift `featx shift` recorded on its own features and images into test (or val)."""
    artifact = Path(artifact)
    info = checked_sidecar(artifact)
    rows = []
    for models_dir in dict.fromkeys((artifact.parent, artifact.parent.parent)):  # a head, or a fine-tune's run folder
        for split in EVALUATED:
            saved = saved_robustness(models_dir, split)  # its rows are found by the model file's sha256
            if saved and not any(r.get("split") == split for r in rows):
                rows += [{**r, "split": split} for r in saved.rows_of(info["sha256"])]
    return write_model_card(artifact, robustness=rows, shift=_own_shift(artifact, info), intended_use=intended_use,
                            limitations=limitations)


def _own_shift(artifact: Path, info: dict) -> list[str]:
    """The shift `featx shift` measured on this model's features into a split the model was evaluated on,
    with the same images; none when it was measured on other features or images."""
    cache, features = Sidecar.from_json(info).features_file(artifact), info["features"].get("config_hash")
    for split in EVALUATED:
        found = recorded_shift(cache, split) if cache and cache.exists() else None
        if not found:
            continue
        start, record = found
        mine = (info.get("splits") or {}).get(split, {}).get("images_sha256")
        if record.get("config_hash") != features or not mine or (record.get("images") or {}).get(split) != mine:
            continue
        low, high = record["ci"]
        return [f"{start} -> {split}: domain ROC-AUC {record['auc']:.3f} [{low:.3f}, {high:.3f}] on the backbone's "
                "features (0.5: the splits look alike to the features; 1: every image betrays its split)"]
    return []


def refresh_cards(data, *, models_dir=None, cache_dir=None) -> list[Path]:
    """The cards of every model of `data` written again (after `featx robustness`)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    models_dir = Path(models_dir) if models_dir else cache_dir / "models"
    found, _ = artifacts_of_dataset(find_artifacts(models_dir), data, cache_dir, models_dir)
    return [refresh_card(path) for path, _ in found]
