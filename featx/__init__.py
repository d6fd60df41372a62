"""featx: frozen ImageNet backbones, cached features, classical heads and fine-tuning, compared fairly.

Names are imported on first use, so commands that only read cached features (`featx fit`,
`featx info`) start without loading torch and timm.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import FeatxError

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it. Modules are named for their role ("extraction"), never
# after a function ("extract"), so that importing one cannot hide the function of that name.
_API = {
    "REGISTRY": "backbones", "Backbone": "backbones", "BackboneSpec": "backbones",
    "create_backbone": "backbones", "get_spec": "backbones", "register": "backbones",
    "Dataset": "data", "load_dataset": "data",
    "FeatureStore": "store",
    "extract": "extraction",
    "evaluate": "metrics", "choose_threshold": "metrics",
    "fit": "fitting", "FitResult": "fitting",
    "ImageClassifier": "artifacts", "FineTunedClassifier": "artifacts", "load": "artifacts",
    "finetune": "finetuning", "FinetuneResult": "finetuning",
    "predict": "prediction",
    "FeatureExtractor": "transformer",
    "compare": "comparison", "report": "reporting", "explain": "heatmaps",
}

__all__ = ["FeatxError", "__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    value = getattr(import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
