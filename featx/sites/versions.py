"""A model's versions for a site: where one goes (beside the model, never over a file featx did not make), and
which images the model may not be given as the site's (its own training and validation images)."""

from __future__ import annotations

from pathlib import Path

from .._core.errors import FeatxError
from ..artifacts.format import load_predictions, read_verified, sidecar_path


def new_version_path(source: Path, out, label: str) -> Path:
    """`out`, or `<name>.<label><suffix>` beside `source`; refused when it is the model itself, has another
    suffix, or holds a file that is not a site version featx wrote (calibrated or adapted)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    out = Path(out) if out else source.with_name(f"{source.stem}.{safe}{source.suffix}")
    if out.resolve() == source.resolve():
        raise FeatxError(f"--out {out} is the model itself; a version for a site is a new file")
    if out.suffix != source.suffix:
        raise FeatxError(f"--out must end in {source.suffix}, as the model does")
    if out.exists() or sidecar_path(out).exists():
        try:
            info = read_verified(out)[0]
            ours = "local" in info or bool((info.get("target") or {}).get("adaptation"))
        except FeatxError:
            ours = False
        if not ours:
            raise FeatxError(f"{out} exists and is not a version featx made of a model; choose another --out")
    return out


def model_images(source: Path, info: dict) -> dict[str, str]:
    """sha1 -> split of the images the model at `source` was trained or validated on (its saved predictions)."""
    if not info.get("predictions"):
        return {}
    return {str(h): split for split, p in load_predictions(source, info).items() if split in ("train", "val")
            for h in p["sha1"]}
