"""Which saved models there are: heads (`*.skops`, or `*.joblib` before format 3) and fine-tunes (`*/model.pt`) with a sidecar, and
those of one dataset. compare, robustness and the report all find models here."""

from __future__ import annotations

import json
from pathlib import Path

from .._core.errors import FeatxError
from .format import described_beside, read_sidecar
from .sidecar import Sidecar

LOOKED_FOR = "(looked for heads, *.skops or *.joblib, and fine-tune run folders, */model.pt, each with its sidecar)"
HOW_TO_INCLUDE = ("run featx fit or featx finetune first; a fine-tune saved with --out DIR is found with --models "
                  "set to the folder that holds DIR")


def find_artifacts(models_dir) -> list[Path]:
    """Heads (`*.skops`, `*.joblib`) and fine-tunes (`*/model.pt`) whose sidecar describes them (a
    pickle left beside its converted head, by a kill in between, is not a second model)."""
    models_dir = Path(models_dir)
    candidates = [*sorted(models_dir.glob("*.skops")), *sorted(models_dir.glob("*.joblib")),
                  *sorted(models_dir.glob("*/model.pt"))]
    return [p for p in candidates if _describes(p)]


def _describes(path: Path) -> bool:
    """Whether `path` is the model its sidecar describes (not a pickle left beside its converted head by
    a kill in between); a sidecar that cannot be read is kept, so that its reader says why."""
    side = path.with_suffix(".json")
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return side.is_file()
    return not isinstance(info, dict) or described_beside(path, info) is None


def artifacts_of_dataset(paths: list[Path], data, cache_dir: Path,
                         models_dir: Path) -> tuple[list[tuple[Path, dict]], str | None]:
    """((path, sidecar) of the artifacts made on `data`, its folder now) (None: the only dataset they
    were made on, and None). A dataset is known by its key (its name and where it lies from the cache
    folder, so a copied project keeps its models), or for older sidecars by its folder."""
    infos = [(p, read_sidecar(p)) for p in paths]
    if data is not None:
        from ..data.datasets import load_dataset

        ds = load_dataset(data, cache_dir=cache_dir)
        infos = [(p, i) for p, i in infos if Sidecar.from_json(i).dataset in (ds.key, str(ds.root))]
        if not infos:
            raise FeatxError(f"no models of {ds.root} in {models_dir} {LOOKED_FOR}; {HOW_TO_INCLUDE}")
        return infos, str(ds.root)
    if not infos:
        raise FeatxError(f"no models in {models_dir} {LOOKED_FOR}; {HOW_TO_INCLUDE}")
    sidecars = [Sidecar.from_json(i) for _, i in infos]
    datasets = {s.dataset: s.data_root for s in sidecars}
    if len(datasets) > 1:
        raise FeatxError(f"{models_dir} holds models of {len(datasets)} datasets "
                         f"({', '.join(sorted(map(str, datasets.values())))}); choose one with --data")
    return infos, None


def method_name(info: dict) -> str:
    return Sidecar.from_json(info).method.label


