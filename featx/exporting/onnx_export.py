"""`featx export`: a saved model as one ONNX file that any onnxruntime (C#, Java, C++, Python) can run.

The graph takes a batch of uint8 RGB images at the model's input size (N×H×W×3) and returns class
probabilities; normalisation and any hflip TTA are inside. What stays outside (decoding, the resize
and the centre crop of the checkpoint's own eval transform) is written as a small JSON recipe next to
it, with the classes and the threshold; the graph's metadata says the same. Before it returns, the
exported file is run by onnxruntime on two generated images beside featx's own prediction, and the
largest difference is reported.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_text_atomic
from .._core.errors import FeatxError
from .._core.versions import featx_version
from ..artifacts.format import pending_path, predictions_path, sidecar_path
from ..artifacts.model_card import card_path, choice_path, use_path
from ..artifacts.predictors import FineTunedClassifier, load
from ..evaluation.decision import DecisionRule
from ..models.numerics import Numerics
from . import graphs

FORMATS = ("onnx",)
PLAIN_MODES = ("L", "RGB", "1", "CMYK", "YCbCr", "P")  # modes Pillow's convert("RGB") reads as featx does


@dataclass
class Exported:
    """What `export` wrote, the onnxruntime example for it, and how closely it reproduces featx."""

    path: Path
    recipe: Path
    card: Path | None
    example: str
    max_difference: float | None  # onnxruntime vs featx on generated images (None: onnxruntime not installed)


def export(model, *, format: str = "onnx", out=None, trust_pickle: bool = False, check: bool = True) -> Exported:
    """Write `model` (a head or fine-tune artifact) as `out` (default: beside it, `.onnx`), its recipe
    (`<out>.preprocess.json`) and its model card (`<out>.md`)."""
    if format not in FORMATS:
        raise FeatxError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    graphs.require("onnx")
    source = Path(model)
    loaded = load(source, trust_pickle=trust_pickle)
    if loaded.local and loaded.local.scaling:
        raise FeatxError(f"{source.name} rescales its probabilities for {loaded.local.site} "
                         f"({loaded.local.scaling.describe()}), which the ONNX graph cannot carry yet; export a "
                         "version calibrated with --scaling none")
    words = Numerics.words(loaded.feature_config.get("compute"))  # a fine-tune records none
    if words:
        raise FeatxError(f"{source.name} was trained on features in {words[0]}; an ONNX graph computes float32 ones, "
                         "which change its probabilities: fit the head on float32 features (featx extract --precision "
                         "fp32) to export it")
    out = Path(out) if out else source.with_suffix(".onnx")
    recipe_path = out.with_name(out.stem + ".preprocess.json")
    check_targets(source, out, recipe_path)
    recipe = input_recipe(loaded)
    graph = _graph(loaded)
    _describe(graph, loaded, recipe)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(graph.SerializeToString())
    if loaded.local and loaded.local.sets:  # a promise the graph does not keep must not travel with it unsaid
        recipe["prediction_sets"] = (f"not exported: the featx model gives {loaded.local.sets.describe()}; "
                                     "the ONNX graph gives probabilities and the decision only")
    write_text_atomic(recipe_path, json.dumps({**recipe, "model": out.name}, indent=2) + "\n")
    card = _copy_card(source, out)
    example = onnxruntime_example(out, recipe_path, recipe)
    difference = _check(loaded, out, recipe) if check else None
    return Exported(out, recipe_path, card, example, difference)


def check_targets(source: Path, out: Path, recipe_path: Path) -> None:
    """Refuse, before any work, an `out` that would overwrite one of the model's own files or a file that
    is not an earlier export (the graph, its recipe and card), and a folder that cannot hold it."""
    files = model_files(source)
    own = {p.resolve() for p in files}
    card = out.with_suffix(".md")
    for target in (out, recipe_path, card):  # the card may be the model's own (rewritten, not replaced by another)
        if target.resolve() in own and not (target is card and out != card and card.resolve() ==
                                            card_path(source).resolve()):
            raise FeatxError(f"--out {out}: {target.name} is one of the model's own files; choose a name that is not "
                             f"{', '.join(sorted(p.name for p in files))}")
    for target, looks_made in ((out, _onnx_by_featx), (recipe_path, _recipe_by_featx), (card, _card_by_featx)):
        if target.exists() and target.resolve() != card_path(source).resolve() and not looks_made(target):
            raise FeatxError(f"--out {out}: {target} exists and is not an earlier featx export; featx does not "
                             "overwrite it (choose another --out, or move it away)")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FeatxError(f"--out {out}: {_first_file(folder)} is a file, not a folder") from None
    except OSError as exc:
        raise FeatxError(f"--out {out}: cannot make the folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FeatxError(f"--out {out}: the folder {folder} is not writable")


def model_files(source: Path) -> list[Path]:
    """Every file that belongs to the artifact at `source`: the model, its sidecar, predictions, card and kept
    use, and their pending versions."""
    files = [source, sidecar_path(source), predictions_path(source), card_path(source), use_path(source),
             choice_path(source)]
    return files + [pending_path(f) for f in files]


def _first_file(folder: Path) -> Path:
    """The first path on the way to `folder` that is a file."""
    for parent in [*reversed(folder.parents), folder]:
        if parent.is_file():
            return parent
    return folder


def _onnx_by_featx(path: Path) -> bool:
    try:
        import onnx

        return onnx.load(str(path), load_external_data=False).producer_name == "featx"
    except Exception:  # not an ONNX file at all
        return False


def _recipe_by_featx(path: Path) -> bool:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and {"featx_version", "model", "input"} <= set(found)


def _card_by_featx(path: Path) -> bool:
    try:
        return path.read_text().startswith("---\nlibrary_name: featx\n")
    except (OSError, UnicodeDecodeError):
        return False


def _graph(loaded):
    """The whole model as one ONNX graph: images -> probabilities."""
    if isinstance(loaded, FineTunedClassifier):
        module = graphs.image_module(loaded.network(), loaded.data_config, tta=loaded.feature_recipe.tta,
                                     softmax=True)
        return graphs.torch_graph(module, loaded.data_config["input_size"], graphs.OUTPUT)
    bb = loaded.backbone()
    module = graphs.image_module(bb.model, bb.data_config, tta=loaded.feature_recipe.tta)
    backbone = graphs.torch_graph(module, bb.data_config["input_size"], graphs.FEATURES)
    head = graphs.head_graph(loaded.head, loaded.info["features"]["num_features"])
    return graphs.merge(backbone, head, "backbone_", "head_")


def input_recipe(loaded) -> dict:
    """How an image file becomes the graph's input, from the checkpoint's own eval transform."""
    from ..data.transforms import EvalTransform

    config = loaded.data_config if isinstance(loaded, FineTunedClassifier) else loaded.backbone().data_config
    steps = list(EvalTransform(config).resize_crop.transforms)
    names = [type(s).__name__ for s in steps]
    if names[:2] != ["Resize", "CenterCrop"] or not isinstance(steps[0].size, int):
        raise FeatxError(f"featx exports models whose eval transform is resize then centre crop; this one is "
                         f"{' -> '.join(names)}")
    crop_h, crop_w = steps[1].size
    return {"featx_version": featx_version(), "method": loaded.sidecar.method.label,
            "input": {"name": graphs.INPUT, "dtype": "uint8", "layout": "NHWC", "height": crop_h, "width": crop_w,
                      "channels": "RGB"},
            "decode": {"policy": str(loaded.decode_policy),
                       "steps": "apply the EXIF orientation; 8-bit grayscale or colour to RGB (a grayscale image "
                                "repeats in all three channels); featx.data.images.load_image reads 16-bit, "
                                "RGBA and DICOM files as training did"},
            "resize": {"shorter_side": int(steps[0].size), "interpolation": steps[0].interpolation.value,
                       "rounding": "the longer side is int(side * long / short), as torchvision's Resize"},
            "crop": {"kind": "center", "height": crop_h, "width": crop_w,
                     "offsets": "top = int(round((h - height) / 2)), left = int(round((w - width) / 2))"},
            "output": {"name": graphs.OUTPUT, "classes": [str(c) for c in loaded.classes_]},
            **{k: v for k, v in loaded.rule.to_dict().items() if k != "classes"}}


def _describe(graph, loaded, recipe: dict) -> None:
    """featx's facts in the graph's metadata, readable by any ONNX runtime."""
    from onnx import helper

    props = {"featx_version": featx_version(), "featx_method": recipe["method"],
             "classes": json.dumps(recipe["output"]["classes"]), "threshold": json.dumps(recipe["threshold"]),
             "threshold_rule": str(recipe["threshold_rule"]), "decision": recipe["decision"],
             "preprocessing": json.dumps({k: recipe[k] for k in ("input", "decode", "resize", "crop")}),
             "featx_model_sha256": loaded.info["sha256"], "featx_sidecar_sha256": str(loaded.info.get("sidecar_sha256"))}
    helper.set_model_props(graph, props)
    graph.producer_name, graph.producer_version = "featx", featx_version()
    graph.doc_string = f"{recipe['method']}: uint8 RGB images N x {recipe['input']['height']} x " \
                       f"{recipe['input']['width']} x 3 -> class probabilities ({', '.join(recipe['output']['classes'])})"


def _copy_card(source: Path, out: Path) -> Path | None:
    """The artifact's model card (written again now, with what featx knows of it) beside the ONNX file."""
    from ..studies.cards import refresh_card

    card = refresh_card(source)
    target = out.with_suffix(".md")
    if card.resolve() != target.resolve():
        write_text_atomic(target, card.read_text())
    return target


def onnxruntime_example(onnx_path: Path, recipe_path: Path, recipe: dict) -> str:
    """A dozen lines of Python that read one image as featx does and print the model's answer; 16-bit and
    transparent images, which featx rescales or flattens onto black, are refused in one line."""
    decide = DecisionRule(tuple(recipe["output"]["classes"]), recipe["threshold"]).python()
    last = f'print({{c: float(v) for c, v in zip(r["output"]["classes"], p)}}, "->", r["output"]["classes"][{decide}])'
    return "\n".join([
        "import json, sys, numpy as np, onnxruntime as ort",
        "from PIL import Image, ImageOps",
        f'r = json.load(open("{recipe_path}"))',
        'img = ImageOps.exif_transpose(Image.open(sys.argv[1]))',
        'if img.mode not in ("L", "RGB", "1", "CMYK", "YCbCr", "P") or "transparency" in img.info:',
        '    sys.exit(f"{sys.argv[1]}: a {img.mode} image (16-bit or transparent): featx rescales or flattens these; use featx predict")',
        'img = img.convert("RGB"); w, h = img.size',
        's = r["resize"]["shorter_side"]; size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)',
        'img = img.resize(size, Image.Resampling[r["resize"]["interpolation"].upper()])',
        'ch, cw = r["crop"]["height"], r["crop"]["width"]; top, left = int(round((size[1] - ch) / 2)), int(round((size[0] - cw) / 2))',
        'x = np.asarray(img.crop((left, top, left + cw, top + ch)), np.uint8)[None]',
        f'p = ort.InferenceSession("{onnx_path}").run(["probabilities"], {{"image": x}})[0][0]',
        last])


def onnx_input(path, recipe: dict) -> np.ndarray:
    """One image file as the graph's input (1×H×W×3 uint8), exactly as the printed example reads it."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode not in PLAIN_MODES or "transparency" in img.info:
        raise FeatxError(f"{path}: a {img.mode} image (16-bit or transparent): featx rescales or flattens these; "
                         "use featx predict")
    img = img.convert("RGB")
    w, h = img.size
    s = recipe["resize"]["shorter_side"]
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize(size, Image.Resampling[recipe["resize"]["interpolation"].upper()])
    ch, cw = recipe["crop"]["height"], recipe["crop"]["width"]
    top, left = int(round((size[1] - ch) / 2)), int(round((size[0] - cw) / 2))
    return np.asarray(img.crop((left, top, left + cw, top + ch)), np.uint8)[None]


def _check(loaded, out: Path, recipe: dict) -> float | None:
    """Largest |p_onnx - p_featx| on two generated images (None when onnxruntime is not installed)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, (w, h) in enumerate([(300, 260), (240, 320)]):
            paths.append(Path(folder) / f"check{i}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
        featx_p, _ = loaded.image_proba(paths, device="cpu")
        onnx_p = np.concatenate([session.run([graphs.OUTPUT], {graphs.INPUT: onnx_input(p, recipe)})[0] for p in paths])
    return float(np.abs(onnx_p - featx_p).max())

