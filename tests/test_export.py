"""featx export: one ONNX graph per model that onnxruntime runs as featx predicts, its recipe and card."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.heads.specs import HEAD_NAMES

from conftest import TINY, make_folder, one_line_error

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
TREES = ("rf", "lightgbm")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every head kind and a fine-tune of the tiny backbone, on generated images: {kind: artifact}."""
    root = tmp_path_factory.mktemp("export")
    data = make_folder(root / "data", per_class=10)
    common = ["--weights", "random", "--cache", root / "cache"]
    assert run("extract", "--data", data, "--backbone", TINY, "--workers", "0", "--no-progress", "--val-fraction", "0.3",
               *common).exit_code == 0
    fitted = run("fit", "--backbone", TINY, "--data", data, "--head", "all", "--threshold", "youden", *common)
    assert fitted.exit_code == 0, fitted.output
    found = {Path(line).name.split("-")[1]: Path(line) for line in fitted.stdout.splitlines() if line.endswith(".skops")}
    tuned = run("finetune", "--data", data, "--backbone", TINY, "--workers", "0", "--no-progress", "--image-size", "64",
                "--batch-size", "4", "--epochs", "1", "--val-fraction", "0.3", "--out", root / "run", *common)
    assert tuned.exit_code == 0, tuned.output
    found["finetune"] = root / "run" / "model.pt"
    return data, found


def _images(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.is_file())[:6]


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*HEAD_NAMES, "finetune"])
def test_the_exported_graph_gives_featx_predict_probabilities(models, tmp_path, kind):
    data, found = models
    out = tmp_path / f"{kind}.onnx"
    exported = run("export", "--model", found[kind], "--out", out)
    assert exported.exit_code == 0, exported.output
    recipe = json.loads(out.with_name(f"{kind}.preprocess.json").read_text())
    assert out.with_suffix(".md").read_text().startswith("---\nlibrary_name: featx")
    images = _images(data)
    expected = featx.predict(found[kind], images, device="cpu")
    expected_p = np.array([[row[f"p_{c}"] for c in recipe["output"]["classes"]] for row in expected])

    import onnxruntime as ort

    from featx.exporting.onnx_export import onnx_input

    session = ort.InferenceSession(str(out))
    got = np.concatenate([session.run(["probabilities"], {"image": onnx_input(p, recipe)})[0] for p in images])
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic batch axis
    batched = session.run(["probabilities"], {"image": np.concatenate([onnx_input(p, recipe) for p in images])})[0]
    assert np.abs(batched - got).max() <= 1e-5
    if kind in TREES:  # float32 thresholds may move a tie: the same decisions
        assert [r["predicted"] for r in expected] == [recipe["output"]["classes"][int(p[1] >= recipe["threshold"])]
                                                      for p in got]
    else:
        assert np.abs(got - expected_p).max() <= 1e-4

    # The printed example, run as a user would, gives the same answer for an image.
    example = exported.stdout.split("(python example.py IMAGE):")[1].strip()
    (tmp_path / "example.py").write_text(example)
    printed = subprocess.run([sys.executable, "example.py", str(images[0])], cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
    shown, _, decision = printed.strip().rpartition(" -> ")
    probabilities = ast.literal_eval(shown)
    assert decision == expected[0]["predicted"]
    assert max(abs(probabilities[c] - expected[0][f"p_{c}"]) for c in probabilities) <= (1e-3 if kind in TREES else 1e-4)


def test_the_graph_carries_featx_facts(models, tmp_path):
    import onnx

    _, found = models
    out = tmp_path / "logreg.onnx"
    assert run("export", "--model", found["logreg"], "--out", out).exit_code == 0
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    sidecar = json.loads(found["logreg"].with_suffix(".json").read_text())
    assert json.loads(props["classes"]) == sidecar["classes"] and json.loads(props["threshold"]) == sidecar["threshold"]
    assert props["featx_model_sha256"] == sidecar["sha256"] and json.loads(props["preprocessing"])["resize"]["shorter_side"]


def test_bad_exports_are_one_line(models, tmp_path, monkeypatch):
    _, found = models
    assert "not found" in one_line_error(run("export", "--model", tmp_path / "nowhere.skops"))
    assert "--format must be one of onnx" in one_line_error(run("export", "--model", found["logreg"], "--format", "tflite"))
    tampered = tmp_path / "t.skops"
    raw = bytearray(found["logreg"].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tampered.write_bytes(bytes(raw))
    shutil.copy(found["logreg"].with_suffix(".json"), tampered.with_suffix(".json"))
    assert "sha256" in one_line_error(run("export", "--model", tampered))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxmltools" else real(name, *a))
    line = one_line_error(run("export", "--model", found["lightgbm"], "--out", tmp_path / "l.onnx"))
    assert "onnxmltools" in line and "featx[export]" in line


def test_the_model_card_keeps_the_intended_use_it_was_given(models):
    _, found = models
    written = run("card", "--model", found["logreg"], "--limitations", "pediatric X-rays from one centre")
    assert written.exit_code == 0, written.output
    assert run("card", "--model", found["logreg"]).exit_code == 0
    card = found["logreg"].with_suffix(".md").read_text()
    assert "pediatric X-rays from one centre" in card and "| val |" in card and "Decision threshold" in card


def test_export_never_writes_over_the_models_own_files_or_a_users(models, tmp_path):
    """--out that names the model's sidecar, file or predictions, or a file featx did not export, is refused
    before any work; the model still loads. An earlier export is replaced."""
    _, found = models
    model = tmp_path / found["logreg"].name
    for suffix in (".skops", ".json", ".predictions.npz", ".md"):
        shutil.copy(found["logreg"].with_suffix(suffix), model.with_suffix(suffix))
    for out in (model.with_suffix(".json"), model, model.with_suffix(".predictions.npz"), model.with_suffix(".md")):
        before = out.read_bytes()
        assert "one of the model's own files" in one_line_error(run("export", "--model", model, "--out", out))
        assert out.read_bytes() == before
    featx.load(model)
    mine = tmp_path / "notes.onnx"
    mine.write_text("my own notes")
    assert "is not an earlier featx export" in one_line_error(run("export", "--model", model, "--out", mine))
    assert mine.read_text() == "my own notes"
    (tmp_path / "report.md").write_text("# mine")
    assert "report.md exists and is not an earlier featx export" in one_line_error(
        run("export", "--model", model, "--out", tmp_path / "report.onnx"))
    again = tmp_path / "again.onnx"
    assert run("export", "--model", model, "--out", again).exit_code == 0
    assert run("export", "--model", model, "--out", again).exit_code == 0  # its own earlier export


def test_export_into_a_folder_it_cannot_use_is_one_line(models, tmp_path):
    _, found = models
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "is a file, not a folder" in one_line_error(
        run("export", "--model", found["logreg"], "--out", blocker / "sub" / "m.onnx"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        assert "not writable" in one_line_error(run("export", "--model", found["logreg"], "--out", locked / "m.onnx"))
    made = run("export", "--model", found["logreg"], "--out", tmp_path / "new" / "deeper" / "m.onnx")
    assert made.exit_code == 0, made.output


def test_the_printed_example_refuses_what_it_would_read_otherwise(models, tmp_path):
    """16-bit and transparent images: featx rescales and flattens them, the printed example would not; it says
    so in one line instead of giving another answer."""
    from PIL import Image

    from conftest import xray_like

    _, found = models
    out = tmp_path / "logreg.onnx"
    exported = run("export", "--model", found["logreg"], "--out", out)
    (tmp_path / "example.py").write_text(exported.stdout.split("(python example.py IMAGE):")[1].strip())
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(xray_like(2).astype(np.uint16) * 16).save(sixteen)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([np.stack([xray_like(3)] * 3, -1), np.full((48, 64), 120, np.uint8)]), "RGBA").save(rgba)
    for image in (sixteen, rgba):
        done = subprocess.run([sys.executable, "example.py", str(image)], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode != 0 and "use featx predict" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("backbone,options", [
    ("timm:test_vit", ["--image-size", "64"]),  # a ViT at another size than its table: DINOv2 at 224 px
    ("timm:test_vit", ["--image-size", "64", "--pool", "cls+avg", "--layers", "last:2"]),
    ("timm:test_resnet", []), ("timm:test_convnext", []),
])
def test_every_architecture_family_exports(tmp_path, backbone, options):
    """ResNet, ConvNeXt and ViT families (EfficientNet above); a ViT whose position table featx resamples at
    runtime (DINOv2 runs at 224 px from a 518-px table) exports with the table resampled once."""
    data = make_folder(tmp_path / "data", per_class=6)
    common = ["--weights", "random", "--cache", tmp_path / "cache", *options]
    assert run("extract", "--data", data, "--backbone", backbone, "--workers", "0", "--no-progress", "--val-fraction",
               "0.3", *common).exit_code == 0
    fitted = run("fit", "--backbone", backbone, "--data", data, "--head", "logreg", *common)
    artifact = Path(fitted.stdout.strip().splitlines()[-1])
    exported = run("export", "--model", artifact, "--out", tmp_path / "m.onnx")
    assert exported.exit_code == 0, exported.output
    assert float(exported.output.split("max |difference in probability| ")[1].split()[0]) <= 1e-4
