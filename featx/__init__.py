"""featx: frozen ImageNet backbones, cached features, classical heads and fine-tuning, compared fairly.

Names are imported on first use, so commands that only read cached features (`featx fit`,
`featx info`, `featx compare`) start without loading torch and timm. The layers, lowest first
(a layer imports only the ones below it; README: "How featx is built"):
_core < data, evaluation < models < features < artifacts < heads, finetuning < labelling, sites < studies < reporting,
exporting < demo < cli.
"""

from importlib import import_module

from ._core.errors import FeatxError
from ._core.versions import featx_version

__version__ = featx_version()

# public name -> module that defines it. Modules and subpackages are named for their role
# ("extraction", "finetuning"), never after a function ("extract", "finetune"), so that
# importing one cannot hide the function of that name.
_API = {
    "REGISTRY": "models.registry", "BackboneSpec": "models.registry", "get_spec": "models.registry",
    "register": "models.registry",
    "Backbone": "models.backbones", "create_backbone": "models.backbones",
    "Dataset": "data.datasets", "load_dataset": "data.datasets",
    "FeatureStore": "features.store",
    "extract": "features.extraction",
    "FeatureExtractor": "features.transformer",
    "evaluate": "evaluation.metrics", "choose_threshold": "evaluation.thresholds",
    "fit": "heads.fitting", "FitResult": "heads.fitting", "shift": "studies.shift",
    "ImageClassifier": "artifacts.predictors", "FineTunedClassifier": "artifacts.predictors",
    "load": "artifacts.predictors", "convert_artifact": "artifacts.conversion",
    "predict": "artifacts.prediction",
    "finetune": "finetuning.runner", "FinetuneResult": "finetuning.runner",
    "compare": "reporting.comparison", "report": "reporting.document", "explain": "artifacts.explaining",
    "robustness": "studies.robustness", "study": "reporting.study_report", "track": "reporting.tracking",
    "StudyResult": "studies.result", "StudyReport": "reporting.study_report",
    "export": "exporting.onnx_export", "refresh_card": "studies.cards",
    "suggest": "reporting.labelling_sheets", "audit": "reporting.labelling_sheets",
    "calibrate": "sites.calibration", "Calibration": "sites.calibration", "adapt_batchnorm": "sites.batchnorm",
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
