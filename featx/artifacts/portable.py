"""Heads saved so that loading them runs no code from the file: skops.io with featx's own list of types.

A pickle names any callable and runs it while loading; a checksum in the sidecar stops a damaged file,
not a crafted pair. A skops file is a zip of arrays and a JSON schema naming each object's type and
how to rebuild it. Before skops rebuilds anything, featx reads that schema itself and refuses a
file that names any type outside TRUSTED_TYPES, or a way of rebuilding outside LOADERS (functions,
methods and `__reduce__` calls are never allowed). Every type here was reviewed: scikit-learn
estimators and the parts they hold (arrays, trees, a kd-tree), numpy scalars and arrays, and
LightGBM's Booster, whose state is its own text model (read by LightGBM's parser, not executed).
"""

from __future__ import annotations

import importlib.abc
import io
import json
import sys
import zipfile

from .._core.errors import FeatxError, first_line

SUFFIX = ".skops"

# What the six heads of featx fit (in memory and out of core) are made of, as skops names types.
TRUSTED_TYPES = frozenset({
    # containers and scalars
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "builtins.NoneType", "builtins.slice", "collections.OrderedDict", "collections.defaultdict",
    # numpy values and the random state scikit-learn keeps
    "numpy.ndarray", "numpy.dtype", "numpy.float16", "numpy.float32", "numpy.float64", "numpy.int8",
    "numpy.int16", "numpy.int32", "numpy.int64", "numpy.uint8", "numpy.intp", "numpy.bool_", "numpy.bool",
    "numpy.str_", "numpy.random.mtrand.RandomState",
    # the pipeline around every head
    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler", "sklearn.decomposition._pca.PCA",
    "sklearn.preprocessing._label.LabelBinarizer", "sklearn.preprocessing._label.LabelEncoder",
    # logreg, linsvm (Platt-calibrated), knn, rf, mlp
    "sklearn.linear_model._logistic.LogisticRegression", "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.svm._classes.LinearSVC", "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.neighbors._classification.KNeighborsClassifier", "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.EuclideanDistance32",
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    # LightGBM: scikit-learn's wrapper, featx's out-of-core one, and the booster as LightGBM's text model
    "lightgbm.sklearn.LGBMClassifier", "lightgbm.basic.Booster", "featx.heads.out_of_core.BoosterClassifier",
    # out-of-core SGD logreg keeps its loss object (rebuilt by skops from its class and parameters)
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
})
# How skops may rebuild an object: from plain values, arrays and object state. Never FunctionNode,
# MethodNode, ReduceNode, PartialNode or OperatorFuncNode: those call a named function.
LOADERS = frozenset({"ObjectNode", "DictNode", "ListNode", "TupleNode", "JsonNode", "NdArrayNode", "TypeNode",
                     "DefaultDictNode", "RandomStateNode", "TreeNode", "SetNode", "BytesNode", "BytearrayNode",
                     "SliceNode", "LossNode"})


def dumps(estimator) -> bytes:
    """The estimator as a skops file's bytes; refused if it holds a type featx would not load back."""
    raw = _skops().dumps(estimator)
    refused = untrusted(requested(raw))
    if refused:  # a head featx cannot read back must not be saved as if it could
        raise FeatxError(f"cannot save this head without pickle: it holds {', '.join(refused)}, "
                         "which featx's list of trusted types does not include")
    return raw


def dump(estimator, path) -> None:
    """Write `dumps(estimator)` to `path` (a temporary file of an atomic write)."""
    raw = dumps(estimator)
    with open(path, "wb") as handle:
        handle.write(raw)


def loads(raw: bytes, source) -> object:
    """The estimator in `raw` (a skops file's bytes, from `source`), after checking every type it names."""
    sio = _skops()
    try:
        types = requested(raw)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise FeatxError(f"{source} is not a skops file featx can read: {first_line(exc)}") from None
    except RecursionError:
        raise FeatxError(f"{source} is not a skops file featx can read: its schema is nested too deeply") from None
    refused = untrusted(types)
    if refused:
        raise FeatxError(f"{source} asks to load {', '.join(refused)}, which featx does not trust; refusing it "
                         "(no code from the file has run)")
    try:
        return sio.loads(raw, trusted=sorted(t for t, _ in types))
    except RecursionError:
        raise FeatxError(f"{source} is not a skops file featx can read: its objects are nested too deeply") from None
    except Exception as exc:  # a trusted file that still fails: a version of scikit-learn or skops
        raise FeatxError(f"cannot load {source}: {type(exc).__name__}: {first_line(exc)}") from None


class _NoTorch(importlib.abc.MetaPathFinder):
    """Refuses `import torch` while skops loads (see `_skops`)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not needed to read or write a head")
        return None


def _skops():
    """skops.io, imported without torch: skops lists scikit-learn's estimators when it is imported, which
    imports every scikit-learn module, and scikit-learn's array-API shim would import torch (3 s more for
    `featx fit`, which never needs it; the shim is not used by featx's heads)."""
    if "skops.io" in sys.modules or "torch" in sys.modules:
        import skops.io

        return skops.io
    blocker = _NoTorch()
    sys.meta_path.insert(0, blocker)
    try:
        import skops.io
    finally:
        sys.meta_path.remove(blocker)
    return skops.io


def requested(raw: bytes) -> set[tuple[str, str]]:
    """Every (type, loader) pair a skops file's schema names, read as JSON without building anything."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[tuple[str, str]] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node or "__class__" in node or "__loader__" in node:
                found.add((f"{node.get('__module__')}.{node.get('__class__')}", str(node.get("__loader__"))))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def untrusted(types: set[tuple[str, str]]) -> list[str]:
    """The types (or ways of loading) in `types` that featx refuses, for the one-line message."""
    refused = {name for name, _ in types if name not in TRUSTED_TYPES}
    refused |= {f"{name} by {loader}" for name, loader in types if loader not in LOADERS}
    return sorted(refused)
