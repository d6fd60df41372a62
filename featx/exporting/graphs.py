"""ONNX graphs of featx models: uint8 images in, class probabilities out.

The network part (a backbone for a head, or a whole fine-tune) is exported by torch with the
normalisation and any hflip TTA inside; a head is converted by skl2onnx (scikit-learn),
onnxmltools (LightGBM's booster, cut at its best iteration) or, for kNN, built here (skl2onnx's
kNN ignores weights="distance"). The parts are joined by `onnx.compose.merge_models` on one opset.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._core.errors import FeatxError
from ..models.onnx_graph import INPUT, OPSET, image_module, torch_graph  # noqa: F401  (export builds on them)

ML_OPSET = 3
FEATURES, OUTPUT = "features", "probabilities"


def require(*modules: str) -> None:
    """One line naming the missing converter packages (the `export` extra)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FeatxError(f"featx export needs {', '.join(missing)}: pip install 'featx[export]'")


def head_graph(pipeline, width: int):
    """The head (a fitted Pipeline or estimator) as ONNX: float32 features -> probabilities."""
    from sklearn.pipeline import Pipeline

    steps = list(pipeline.steps) if isinstance(pipeline, Pipeline) else [("clf", pipeline)]
    final = steps[-1][1]
    name = type(final).__name__
    if name in ("LGBMClassifier", "BoosterClassifier"):
        return _chain(_sklearn(Pipeline(steps[:-1]), width, FEATURES, "scaled") if len(steps) > 1 else None,
                      _lightgbm(final, width))
    if name == "KNeighborsClassifier":
        return _chain(_sklearn(Pipeline(steps[:-1]), width, FEATURES, "scaled") if len(steps) > 1 else None,
                      _knn(final))
    return _sklearn(pipeline, width, FEATURES, OUTPUT, classifier=final)


def _sklearn(model, width: int, input_name: str, output: str, classifier=None):
    """skl2onnx's graph of a classifier (its probabilities) or of a transformer chain (its output)."""
    require("skl2onnx")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(classifier): {"zipmap": False}} if classifier is not None else None
    try:
        graph = convert_sklearn(model, initial_types=[(input_name, FloatTensorType([None, width]))], options=options,
                                target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except Exception as exc:  # skl2onnx has no converter for this estimator
        raise FeatxError(f"skl2onnx cannot convert this head ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from None
    return _only_output(graph, "probabilities" if classifier is not None else graph.graph.output[0].name, output)


def _lightgbm(step, width: int):
    """onnxmltools' graph of the booster, truncated to the trees featx predicts with."""
    require("onnxmltools")
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = step.booster_
    best = getattr(step, "best_iteration_", None) or -1  # 0 or None: every tree
    booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_lightgbm(booster, initial_types=[("scaled", FloatTensorType([None, width]))], zipmap=False,
                                 target_opset=15)  # onnxmltools' LightGBM converter stops at 15
    return _only_output(_upgraded(graph), "probabilities", OUTPUT)


def _knn(step):
    """kNN as scikit-learn predicts it: Euclidean distances to every training row (in float64), the k
    nearest, weights 1/d ("distance"; an exact match alone when one is at distance 0) or 1, and
    the weighted share of each class."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if step.metric not in ("minkowski", "euclidean") or (step.metric == "minkowski" and step.p != 2):
        raise FeatxError(f"featx exports kNN with Euclidean distance only, not metric={step.metric}, p={step.p}")
    train = np.asarray(step._fit_X, np.float64)
    labels = np.eye(len(step.classes_))[np.asarray(step._y)]
    const = {"train_t": train.T, "train_sq": (train ** 2).sum(1)[None, :], "labels": labels,
             "k": np.array([step.n_neighbors], np.int64), "zero": np.array(0.0), "two": np.array(2.0)}
    node = helper.make_node
    nodes = [
        node("Cast", ["scaled"], ["x"], to=TensorProto.DOUBLE),
        node("Mul", ["x", "x"], ["x2"]), node("ReduceSum", ["x2", "axes1"], ["x_sq"], keepdims=1),
        node("MatMul", ["x", "train_t"], ["xt"]), node("Mul", ["xt", "two"], ["xt2"]),
        node("Sub", ["x_sq", "xt2"], ["d0"]), node("Add", ["d0", "train_sq"], ["d1"]),
        node("Max", ["d1", "zero"], ["d2"]), node("Sqrt", ["d2"], ["dist"]),
        node("TopK", ["dist", "k"], ["near", "index"], largest=0, sorted=1),
        node("Gather", ["labels", "index"], ["onehot"], axis=0),  # N×k×classes
    ]
    if step.weights == "distance":
        nodes += [node("Equal", ["near", "zero"], ["exact"]), node("Cast", ["exact"], ["exact_w"], to=TensorProto.DOUBLE),
                  node("ReduceMax", ["exact_w"], ["any_exact"], axes=[1], keepdims=1),
                  node("Cast", ["any_exact"], ["any_exact_b"], to=TensorProto.BOOL),
                  node("Max", ["near", "tiny"], ["safe"]), node("Reciprocal", ["safe"], ["inverse"]),
                  node("Where", ["any_exact_b", "exact_w", "inverse"], ["w"])]
        const["tiny"] = np.array(1e-300)
    elif step.weights == "uniform":
        nodes += [node("Mul", ["near", "zero"], ["nz"]), node("Add", ["nz", "one"], ["w"])]
        const["one"] = np.array(1.0)
    else:
        raise FeatxError("featx exports kNN with weights 'distance' or 'uniform', not a callable")
    nodes += [node("Unsqueeze", ["w", "axes2"], ["w3"]), node("Mul", ["onehot", "w3"], ["votes"]),
              node("ReduceSum", ["votes", "axes1"], ["per_class"], keepdims=0),
              node("ReduceSum", ["per_class", "axes1"], ["total"], keepdims=1),
              node("Div", ["per_class", "total"], ["share"]), node("Cast", ["share"], [OUTPUT], to=TensorProto.FLOAT)]
    const.update(axes1=np.array([1], np.int64), axes2=np.array([2], np.int64))
    graph = helper.make_graph(
        nodes, "knn", [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [None, train.shape[1]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, len(step.classes_)])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in const.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def _only_output(graph, keep: str, name: str):
    """The graph with one output, `keep`, renamed `name` (drops skl2onnx's label output)."""
    import onnx

    for node in graph.graph.node:
        node.output[:] = [name if o == keep else o for o in node.output]
    outputs = [o for o in graph.graph.output if o.name == keep]
    if not outputs:
        raise FeatxError(f"the converted head has no output {keep}")
    outputs[0].name = name
    del graph.graph.output[:]
    graph.graph.output.append(outputs[0])
    _set_opsets(graph, _unique_opsets(graph.opset_import))
    onnx.checker.check_model(graph)
    return graph


def _unique_opsets(opsets):
    """One import per domain (skl2onnx may list a domain twice), at the highest version listed."""
    from onnx import helper

    best: dict[str, int] = {}
    for o in opsets:
        best[o.domain] = max(best.get(o.domain, 0), o.version)
    return [helper.make_opsetid(d, v) for d, v in best.items()]


def _set_opsets(graph, opsets) -> None:
    del graph.opset_import[:]
    graph.opset_import.extend(opsets)


def _upgraded(graph):
    """The graph at featx's opset for the default domain (merge_models needs one version per domain)."""
    from onnx import version_converter

    _set_opsets(graph, _unique_opsets(graph.opset_import))
    if {o.domain: o.version for o in graph.opset_import}.get("", OPSET) != OPSET:
        graph = version_converter.convert_version(graph, OPSET)
    return graph


def _chain(first, second):
    """`first`'s single output feeding `second`'s single input (first None: second alone)."""
    if first is None:
        return second
    return merge(first, second, "pre_", "clf_")


def merge(first, second, prefix_first: str, prefix_second: str):
    """`first`'s output into `second`'s input, the joined graph keeping the first's input and the
    second's output names (onnx.compose.merge_models, on one IR version and opset)."""
    import onnx
    from onnx import compose

    first, second = _upgraded(first), _upgraded(second)
    ir = max(first.ir_version, second.ir_version)
    first.ir_version = second.ir_version = ir
    out, inp = first.graph.output[0].name, second.graph.input[0].name
    merged = compose.merge_models(first, second, io_map=[(out, inp)],
                                  prefix1=prefix_first, prefix2=prefix_second)
    renames = {prefix_first + first.graph.input[0].name: first.graph.input[0].name,
               prefix_second + second.graph.output[0].name: second.graph.output[0].name}
    for node in merged.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for value in [*merged.graph.input, *merged.graph.output]:
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(merged)
    return merged
