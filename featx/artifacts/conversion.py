"""`featx convert`: rewrite a head saved as a joblib pickle (before format 3) as a skops file, once.

Reading the pickle runs whatever code it holds, so conversion needs the caller's word that the file
comes from a trusted source (`trust_pickle=True`). The new artifact keeps the sidecar's facts, its
predictions and its name (`<name>.skops` beside `<name>.json`), and records what it was converted from;
the pickle is removed once the new sidecar is committed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .._core.errors import FeatxError
from .._core.versions import featx_version, package_versions
from . import portable
from .model_card import write_model_card
from .format import (SIDECAR_DIGEST, head_from_bytes, load_predictions, read_verified, save_artifact,
                     serialization)

# Sidecar fields that describe the stored file, written again for the new one.
STORAGE_FIELDS = ("format", "file", "sha256", "predictions", "splits", "serialization", SIDECAR_DIGEST)


def convert_artifact(path, *, trust_pickle: bool = False) -> Path:
    """The path of the skops artifact written from the joblib head at `path` (which must be trusted)."""
    path = Path(path)
    info, raw = read_verified(path)
    kind = serialization(info)
    if kind != "joblib":
        raise FeatxError(f"{path} is already stored without pickle ({kind}); there is nothing to convert")
    if not trust_pickle:
        raise FeatxError(f"converting {path} unpickles it, which runs any code it holds: pass --trust-pickle "
                         "(trust_pickle=True) only for a file from a source you trust")
    estimator = head_from_bytes(path, info, raw, trust_pickle=True)
    predictions = load_predictions(path, info) if info.get("predictions") else None
    kept = {k: v for k, v in info.items() if k not in STORAGE_FIELDS}
    kept["versions"] = {**info.get("versions", {}), **package_versions("skops")}
    kept["converted_from"] = {"file": path.name, "sha256": info["sha256"], "format": info.get("format"),
                              "by_featx": featx_version()}
    new = save_artifact(path.with_suffix(portable.SUFFIX), estimator, kept, predictions)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # after the commit: the sidecar now describes the new file
    write_model_card(new)
    return new
