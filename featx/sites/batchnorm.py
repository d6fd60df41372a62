"""`featx adapt`: a fine-tune's BatchNorm statistics re-estimated on a target site's images (AdaBN, Li et al.
2016), without their labels.

Every BatchNorm layer's running mean and variance is reset and re-estimated as the plain average over the
target's images (momentum None), fed exactly as the model was trained (its data config and decode policy);
every weight stays as it was. The result is a new version of the model, named by the target's fingerprint. When
the target has labels, both versions are scored on them, so the log says whether it helped there; without
labels it says it cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core.console import log_line
from .._core.errors import FeatxError
from ..artifacts.format import save_checkpoint_artifact
from ..artifacts.model_card import write_model_card
from ..artifacts.predictors import FineTunedClassifier, load
from ..evaluation.metrics import evaluate_with_intervals
from ..features.target import Target, TargetListing
from .versions import model_images, new_version_path

WORDS = "AdaBN (BatchNorm statistics re-estimated on the target's images)"


@dataclass(frozen=True)
class Adapted:
    """What `adapt_batchnorm` made: the new version, and both versions' metrics on the labelled target images."""

    path: Path
    images: int
    before: dict | None
    after: dict | None

    def lines(self) -> list[str]:
        out = [f"BatchNorm statistics re-estimated on {self.images} target images; wrote {self.path}"]
        if self.after is None:
            return out + ["no target image has a label: whether AdaBN helps there cannot be checked until some are "
                          "labelled (featx calibrate)"]
        for name, m in (("before", self.before), ("after", self.after)):
            ci = m["ci"].get("roc_auc")
            out.append(f"{name}: ROC-AUC {m['roc_auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") +
                       f", balanced accuracy {m['balanced_accuracy']:.3f} on {m['n']} labelled target images")
        return out


def adapt_batchnorm(model, target, *, target_group_pattern: str | None = None, out=None, cache_dir=None,
                    batch_size: int = 32, workers: int = 0, log=None) -> Adapted:
    """A new version of the fine-tune `model` whose BatchNorm statistics come from the images of `target` (a
    folder or manifest, labelled or not), saved as `out` (default beside it, `<name>.adabn-<site>.pt`)."""
    log = log or log_line
    source = Path(model)
    loaded = load(source)
    if not isinstance(loaded, FineTunedClassifier):
        raise FeatxError(f"{source.name} is a head on frozen features; AdaBN re-estimates a fine-tune's BatchNorm "
                         "statistics (for heads: featx fit --target DIR --adapt standardise|coral|ot|prior)")
    if loaded.local or (loaded.info.get("target") or {}).get("adaptation"):
        raise FeatxError(f"{source.name} is already a version made for a site; adapt the model it came from")
    listing = TargetListing.of(Target(str(target), target_group_pattern), cache_dir or source.parent)
    listing.check(list(loaded.classes_), model_images(source, loaded.info))
    path = new_version_path(source, out, f"adabn-{listing.target.name}")
    files = [listing.ds.absolute(p) for p in listing.ds.paths]
    labelled, y = listing.labelled(loaded.classes_)
    net = _reestimated(loaded, files, batch_size, workers)
    info = {k: v for k, v in loaded.info.items() if k not in ("file", "sha256", "predictions", "splits",
                                                                "sidecar_sha256", "metrics")}
    info["target"] = {"site": listing.target.name, "images": len(files), "labelled": int(len(labelled)),
                      "images_sha256": listing.fingerprint,
                      "adaptation": {"method": "adabn", "words": WORDS, "unlabelled_target_images": len(files)}}
    before = after = predictions = None
    if len(labelled):
        shown = [files[i] for i in labelled]
        before = _metrics(loaded, y, loaded.predict_proba(shown))
        proba = _network_proba(loaded, net, shown)
        after = _metrics(loaded, y, proba)
        info["metrics"] = {"target": after}
        predictions = {"target": {"path": [listing.ds.paths[i] for i in labelled],
                                  "sha1": [listing.sha1s[i] for i in labelled], "y": y, "proba": proba}}
    save_checkpoint_artifact(path, {k: v.detach().cpu() for k, v in net.state_dict().items()}, info, predictions)
    write_model_card(path)
    result = Adapted(path, len(files), before, after)
    for line in result.lines():
        log(line)
    return result


def _reestimated(loaded: FineTunedClassifier, files: list[Path], batch_size: int, workers: int):
    """A copy of the network, in eval mode, with every BatchNorm's running statistics averaged over `files` (CPU)."""
    import copy

    import torch

    from ..data.loading import ImageFiles, image_loader
    from ..data.transforms import EvalTransform, Normalize

    net = copy.deepcopy(loaded.network())
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise FeatxError(f"{loaded.path.name} has no BatchNorm layer (e.g. a ViT, which normalises per image): "
                         "AdaBN has nothing to re-estimate")
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over every target batch
        layer.train()
    data_config = loaded.data_config
    normalize = Normalize(data_config)
    dataset = ImageFiles(Path("/"), [str(Path(f).absolute()) for f in files], EvalTransform(data_config),
                         policy=loaded.decode_policy)
    batches = [list(range(i, min(i + batch_size, len(files)))) for i in range(0, len(files), batch_size)]
    with torch.no_grad():
        for _, images, problems, _ in image_loader(dataset, batches, workers, torch.device("cpu")):
            if problems:
                raise FeatxError(f"{len(problems)} target images could not be read (e.g. {files[problems[0][0]]})")
            if images is not None:
                net(normalize(images))
    return net.eval()


def _network_proba(loaded: FineTunedClassifier, net, files) -> np.ndarray:
    """The adapted network's probabilities of readable labelled images (any unreadable one is refused)."""
    proba, reasons = loaded.network_proba(net, files)
    if any(reasons):
        raise FeatxError(f"a labelled target image could not be read: {next(r for r in reasons if r)}")
    return proba


def _metrics(model: FineTunedClassifier, y, proba) -> dict:
    return evaluate_with_intervals(y, proba, list(model.classes_), model.threshold if model.threshold is not None else 0.5)
