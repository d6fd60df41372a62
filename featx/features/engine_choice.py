"""`--engine auto` on a CPU: which engine computes this run's features fastest, with eager's numbers.

The first large run of a recipe on a machine races the installed engines on one batch of its own images
(models.engines.race) and keeps the fastest whose features agree with eager float32 to cosine 0.9999
on every one of them; the outcome is remembered in `<cache>/engines.json`, per CPU, thread count,
recipe, batch size and library versions, so later runs build only the winner. torch.compile is not raced
(a compile of tens of seconds each run): name `--engine compile` for it. Runs of fewer than
AUTO_MIN_IMAGES images, and runs on a GPU, use eager: a race could not pay for itself.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
from pathlib import Path

import torch

from .._core.accelerators import cpu_name
from .._core.atomic import write_text_atomic
from .._core.hashing import record_hash
from .._core.versions import installed_version
from ..models.engines import AGREEMENT, frozen_forward, race
from ..models.numerics import GRAPH_ENGINES, Numerics

AUTO_MIN_IMAGES = 256
RECORD = "engines.json"


def chosen_forward(model: torch.nn.Module, data_config: dict, device: torch.device, numerics: Numerics, *,
                   tta: str, batch_size: int, n_images: int, probe, recipe_hash: str, cache_dir: Path, log):
    """(forward, the numerics it runs) for a run of `n_images`: `numerics` as asked, or for engine auto the
    remembered or raced winner. `probe()`: one uint8 batch of the run's images (None if none is readable)."""
    if numerics.engine != "auto":
        return frozen_forward(model, data_config, device, numerics, tta, batch_size, log), numerics
    eager = Numerics(numerics.device, "eager", numerics.precision)
    candidates = [e for e in GRAPH_ENGINES if importlib.util.find_spec(e)]
    if device.type != "cpu" or not candidates or n_images < AUTO_MIN_IMAGES:
        why = ("on a GPU" if device.type != "cpu" else "neither openvino nor onnxruntime is installed"
               if not candidates else f"{n_images} images are too few to pay for a race")
        log(f"engine auto: eager ({why})")
        return frozen_forward(model, data_config, device, eager, tta, batch_size, log), eager
    key = record_hash({"cpu": cpu_name(), "threads": torch.get_num_threads(), "recipe": recipe_hash,
                       "batch_size": batch_size, "tta": tta,
                       **{name: installed_version(name) for name in ("torch", *candidates)}}, 16)
    path = Path(cache_dir) / RECORD
    known = _read(path).get(key)
    if known:
        log(f"engine auto: {known['engine']} (the fastest agreeing with eager when raced on {known['when']}: "
            f"{_rates(known)})")
        winner = Numerics("cpu", known["engine"], "fp32")
        return frozen_forward(model, data_config, device, winner, tta, batch_size, log), winner
    images = probe()
    if images is None:
        log("engine auto: eager (no readable image in the first batch to race on)")
        return frozen_forward(model, data_config, device, eager, tta, batch_size, log), eager
    trials = race(model, data_config, images, candidates, tta=tta, log=log)
    best = max((t for t in trials if t.engine == "eager" or t.agrees()), key=lambda t: t.images_per_s)
    outcome = {"engine": best.engine, "when": datetime.date.today().isoformat(),
               "images_per_s": {t.engine: round(t.images_per_s, 1) for t in trials},
               "min_cosine": {t.engine: t.min_cosine for t in trials}}
    _remember(path, key, outcome)
    disagreeing = [f"{t.engine} (cosine {t.min_cosine:.6f})" for t in trials if not t.agrees()]
    log(f"engine auto: {best.engine}, the fastest of {len(trials)} raced on {len(images)} of these images "
        f"({_rates(outcome)}); features within cosine {AGREEMENT} of eager on each"
        + (f"; left out for other features: {', '.join(disagreeing)}" if disagreeing else ""))
    return best.forward, Numerics("cpu", best.engine, "fp32")


def _rates(outcome: dict) -> str:
    return ", ".join(f"{e} {r:.0f} img/s" for e, r in outcome["images_per_s"].items())


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _remember(path: Path, key: str, outcome: dict) -> None:
    """Add one race's outcome to the record (a lost race is only re-run: never an error)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({**_read(path), key: outcome}, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
