"""The engines that run a frozen model on a batch of images, and the race that picks the fastest.

eager and compile are torch (`FrozenForward`: BatchNorm folded, channels-last, autocast); openvino and
onnxruntime run the model's ONNX graph (models.onnx_graph, normalisation inside) on the CPU's cores.
Every engine is a callable: uint8 N×3×H×W on its `device` -> float32 outputs (numpy), row for row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .._core.console import silent
from .._core.errors import FeatxError, first_line
from .._core.optional import library
from .frozen import FrozenForward
from .numerics import EXTRA, GRAPH_ENGINES, Numerics
from .onnx_graph import graph_bytes, image_module

AGREEMENT = 0.9999  # the least cosine to eager float32, on every image of the race, to share eager's cache
RACE_SECONDS = 0.5  # timed calls per engine: at least 2, and until this long


def frozen_forward(model: torch.nn.Module, data_config: dict, device: torch.device, numerics: Numerics,
                   tta: str = "none", batch_size: int = 16, log=silent, graph: bytes | None = None):
    """`model` run by `numerics.engine` at its precision (compile pads every batch to `batch_size`;
    `graph`: the model's ONNX graph when already made, for the graph engines)."""
    if numerics.engine in ("eager", "compile"):
        forward = FrozenForward(model, data_config, device, numerics.autocast(), tta, log)
        if numerics.engine == "compile":
            forward.compile(batch_size)
        return forward
    return GraphForward(model, data_config, numerics, tta, graph)


class GraphForward:
    """The model's ONNX graph (uint8 N×H×W×3 in) compiled by OpenVINO (float32, or bfloat16 on a CPU that has
    it) or ONNX Runtime (float32), on as many threads as torch uses."""

    device = torch.device("cpu")

    def __init__(self, model: torch.nn.Module, data_config: dict, numerics: Numerics, tta: str = "none",
                 graph: bytes | None = None):
        graph = graph or model_graph(model, data_config, tta)
        threads = torch.get_num_threads()
        self.engine = numerics.engine
        module, extra = EXTRA[numerics.engine]
        runtime = library(module, module, extra)
        try:
            if numerics.engine == "openvino":
                core = runtime.Core()
                hint = {"fp32": "f32", "bf16": "bf16"}[numerics.precision]  # f32 named: on AMX it would pick bf16
                self.run = core.compile_model(core.read_model(graph, b""), "CPU", {
                    "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
            else:
                options = runtime.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                options.log_severity_level = 3  # no notes about unused initializers
                session = runtime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                self.run = lambda x: session.run(None, {"image": x})
        except Exception as exc:  # an operator the runtime cannot compile
            raise FeatxError(f"{numerics.engine} cannot run this model ({type(exc).__name__}: {first_line(exc)[:200]}); "
                             "use --engine eager") from None

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1))
        return np.asarray(self.run(x)[0], np.float32)


def model_graph(model: torch.nn.Module, data_config: dict, tta: str = "none") -> bytes:
    """The frozen model's ONNX graph as the graph engines run it: uint8 N×H×W×3 in, features out."""
    return graph_bytes(image_module(model, data_config, tta), data_config["input_size"], "features")


@dataclass
class Trial:
    """One engine in the race: its speed on the probe images and how far its features are from eager float32."""

    engine: str
    images_per_s: float
    min_cosine: float
    forward: object = None

    def agrees(self) -> bool:
        return self.min_cosine >= AGREEMENT


def race(model: torch.nn.Module, data_config: dict, probe: torch.Tensor, engines, *, tta: str = "none",
         log=silent) -> list[Trial]:
    """Each of `engines` (float32, on the CPU) built and timed on `probe` (one batch of the run's own
    images), its features compared with eager's image by image. Eager runs first; an engine that fails
    to build is logged and left out."""
    trials, reference, graph = [], None, None
    for engine in ["eager", *[e for e in engines if e != "eager"]]:
        try:
            if engine in GRAPH_ENGINES and graph is None:
                graph = model_graph(model, data_config, tta)
            forward = frozen_forward(model, data_config, torch.device("cpu"), Numerics("cpu", engine, "fp32"), tta,
                                     len(probe), log, graph)
        except FeatxError as exc:
            log(f"engine {engine} left out: {exc}")
            continue
        out = forward(probe)  # warm-up
        calls, started = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - started < RACE_SECONDS:
            forward(probe)
            calls += 1
        rate = calls * len(probe) / (time.perf_counter() - started)
        reference = out if reference is None else reference
        trials.append(Trial(engine, rate, float(min_cosine(out, reference)), forward))
    return trials


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows of `a` and `b` (1 for two zero rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-300), np.all(a == b, axis=1).astype(float))
    return float(same.min())
