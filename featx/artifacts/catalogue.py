"""Which saved models there are: heads (`*.joblib`) and fine-tunes (`*/model.pt`) with a sidecar, and
those of one dataset. compare, robustness and the report all find models here."""

from __future__ import annotations

from pathlib import Path

from .._core.errors import FeatxError
from .format import read_sidecar
from .sidecar import Sidecar

LOOKED_FOR = "(looked for heads, *.joblib, and fine-tune run folders, */model.pt, each with its sidecar)"
HOW_TO_INCLUDE = ("run featx fit or featx finetune first; a fine-tune saved with --out DIR is found with --models "
                  "set to the folder that holds DIR")


def find_artifacts(models_dir) -> list[Path]:
    """Heads (`*.joblib`) and fine-tunes (`*/model.pt`) that have a sidecar."""
    models_dir = Path(models_dir)
    found = [p for p in sorted(models_dir.glob("*.joblib")) + sorted(models_dir.glob("*/model.pt"))
             if p.with_suffix(".json").is_file()]
    return found


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


