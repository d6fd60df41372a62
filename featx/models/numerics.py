"""How a frozen forward computes — which engine, at which precision, on which kind of device — as one
value, and the name it gives a cache's numbers (`identity`). Torch-free: `extract` checks it before any work.

In float32 every engine computes the same features to float rounding (engines.choose checks it on the
run's own images), so they share one cache; a reduced precision is a recipe of its own per engine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .._core import accelerators
from .._core.errors import FeatxError
from .._core.options import check_choice

GRAPH_ENGINES = ("openvino", "onnxruntime")  # run an ONNX graph of the model, on the CPU
EXTRA = {"openvino": ("openvino", "openvino"), "onnxruntime": ("onnxruntime", "export")}  # engine -> (module, extra)


@dataclass(frozen=True)
class Numerics:
    """`engine`: eager, compile, openvino, onnxruntime, or auto (float32 only: chosen per run among those that
    give eager's features). `precision`: fp32; bf16 on a CPU; amp-bf16 or amp-fp16 (autocast) on a GPU."""

    device: str  # the device's kind: cpu, cuda, mps
    engine: str
    precision: str

    @classmethod
    def asked(cls, device_kind: str, engine: str = "auto", precision: str = "auto",
              device_amp: str = "fp32") -> Numerics:
        """The numerics `--engine` and `--precision` ask for on `device_kind`, or one line saying why not.
        `device_amp`: what precision "auto" means off the CPU (runtime.precision_for)."""
        check_choice("engine", engine)
        check_choice("precision", precision)
        cpu = device_kind == "cpu"
        if precision == "auto":
            precision = "fp32" if cpu else device_amp
        elif precision == "bf16" and not cpu:
            precision = "amp-bf16"
        elif precision == "bf16":
            accelerators.require_cpu_bf16()
        if engine in GRAPH_ENGINES:
            _installed(engine)
            if not cpu:
                raise FeatxError(f"--engine {engine} runs on the CPU; add --device cpu, or use eager or compile on "
                                 f"{device_kind}")
        if engine == "onnxruntime" and precision != "fp32":
            raise FeatxError("onnxruntime has no bfloat16 kernels for CPUs; use --engine openvino or eager with "
                             "--precision bf16")
        if engine == "auto" and precision != "fp32":  # the engine names the recipe: never a timing's choice
            engine = "openvino" if cpu and importlib.util.find_spec("openvino") else "eager"
        return cls(device_kind, engine, precision)

    @classmethod
    def for_device(cls, device: str, engine: str = "auto", precision: str = "auto") -> Numerics | None:
        """The numerics asked on `device` as a user names it (auto, cpu, cuda:N, mps), checked before any work
        where its kind is known without torch (the CPU, or a named device); None where only torch can tell
        (device auto on a machine with a GPU), after checking the names and the engine's package."""
        kind = "cpu" if device == "cpu" or (device == "auto" and accelerators.surely_cpu_only()) else \
            None if device == "auto" else device.split(":")[0]
        if kind is None:
            cls.asked("cpu", engine, "fp32")
            return None
        return cls.asked(kind, engine, precision, "amp-bf16" if kind == "cuda" else "fp32")

    def identity(self) -> str:
        """The cache's "precision": fp32 for every float32 engine (their features agree to rounding); a GPU's
        autocast as before (amp-bf16, amp-fp16); on a CPU, bf16 per engine (eager-bf16, openvino-bf16...)."""
        if self.precision == "fp32" or self.device != "cpu":
            return self.precision
        return f"{self.engine}-{self.precision}"

    def recipe(self) -> dict:
        """What a cache (and a head's sidecar) records of these numerics, under "compute": the precision, and the
        engine where the features depend on it (a CPU's bfloat16; None for float32 and a GPU's autocast)."""
        return {"precision": self.precision, "engine": None if self.identity() == self.precision else self.engine}

    @staticmethod
    def options(recipe: dict | None) -> dict:
        """The extract options (engine, precision) that make a cache whose `recipe` is recorded (None: a cache from
        before engines, float32 or autocast): auto for float32 and autocast, else the engine and precision."""
        if not recipe or recipe.get("engine") is None:
            return {"engine": "auto", "precision": "auto"}
        return {"engine": recipe["engine"], "precision": recipe["precision"]}

    @staticmethod
    def words(recipe: dict | None) -> tuple[str, ...]:
        """How features of this recorded `recipe` ("compute") name themselves in a method's name: ("openvino
        bf16",) for a CPU's bfloat16, () for float32 and a GPU's autocast."""
        wanted = Numerics.options(recipe)
        return () if wanted["precision"] == "auto" else (f"{wanted['engine']} {wanted['precision']}",)

    def autocast(self) -> str:
        """The precision torch's own engines run at (runtime.autocast): fp32, amp-bf16 or amp-fp16."""
        return "amp-bf16" if self.precision == "bf16" else self.precision

    def describe(self) -> str:
        return f"{self.engine} {self.precision}"


def _installed(engine: str) -> None:
    module, extra = EXTRA[engine]
    if importlib.util.find_spec(module) is None:
        raise FeatxError(f"--engine {engine} needs {module}: pip install 'featx[{extra}]'")
