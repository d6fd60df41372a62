"""featx: frozen ImageNet backbones, cached features, classical heads and fine-tuning, compared fairly."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .backbones import REGISTRY, Backbone, BackboneSpec, create_backbone, get_spec, register
from .data import Dataset, load_dataset
from .errors import FeatxError
from .extract import extract
from .store import FeatureStore

__all__ = [
    "REGISTRY", "Backbone", "BackboneSpec", "Dataset", "FeatureStore", "FeatxError",
    "create_backbone", "extract", "get_spec", "load_dataset", "register", "__version__",
]
