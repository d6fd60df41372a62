"""Extraction engines and precisions (models.numerics, models.engines, features.engine_choice): each engine's
features against eager's within its stated tolerance, which caches they share, auto's race, and the refusals."""

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx._core import accelerators
from featx._core.accelerators import cpu_has_bf16
from featx.artifacts.model_card import card_path
from featx.artifacts.sidecar import Sidecar
from featx.cli import main
from featx.features import engine_choice
from featx.models import engines

from conftest import TINY, make_folder, one_line_error

FAST = dict(backbone=TINY, weights="random", workers=0, progress=False, device="cpu")
GRAPH = [pytest.param(e, marks=pytest.mark.skipif(importlib.util.find_spec(e) is None, reason=f"{e} not installed"))
         for e in ("openvino", "onnxruntime")]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cosines(X, Y):
    return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


@pytest.mark.parametrize("engine", [*GRAPH, pytest.param("compile", marks=pytest.mark.slow)])
def test_every_float32_engine_gives_eagers_features_and_shares_its_cache(tmp_path, folder, engine):
    (folder / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not really")
    eager = featx.extract(folder, batch_size=5, engine="eager", cache_dir=tmp_path / "a", log=lambda m: None, **FAST)
    result = run("extract", "--data", folder, "--backbone", TINY, "--weights", "random", "--workers", "0", "--device",
                 "cpu", "--no-progress", "--batch-size", 5, "--engine", engine, "--cache", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert f"engine {engine} fp32" in result.output and "broken.jpeg" in result.output
    other = featx.FeatureStore(next((tmp_path / "b").rglob("*.h5")))
    assert other.path.name == eager.path.name  # same numbers to float rounding: the same cache identity
    assert other.config["engines"] == [engine] and eager.config["engines"] == ["eager"]
    assert f"engine {engine}" in run("info", other.path).output
    X, Y = eager.arrays()[0], other.arrays()[0]  # 12 images in batches of 5: compile pads the last one
    assert len(X) == len(Y) == 12 and np.abs(X - Y).max() <= 1e-4 * np.abs(X).max()
    assert cosines(X, Y).min() >= engines.AGREEMENT


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
@pytest.mark.parametrize("engine", ["eager", *GRAPH[:1]])
def test_bfloat16_is_a_recipe_of_its_own_per_engine_close_to_float32(tmp_path, folder, engine):
    fp32 = featx.extract(folder, engine="eager", log=lambda m: None, **FAST)
    bf16 = featx.extract(folder, engine=engine, precision="bf16", log=lambda m: None, **FAST)
    assert bf16.path != fp32.path and bf16.config["precision"] == f"{engine}-bf16"
    assert fp32.config["precision"] == "fp32"
    X, Y = fp32.arrays()[0], bf16.arrays()[0]
    assert cosines(X, Y).min() > 0.99 and not np.array_equal(X, Y)
    again = featx.extract(folder, engine=engine, precision="bf16", log=lambda m: None, **FAST)
    assert again.path == bf16.path  # found again, not mixed with float32 rows
    artifacts = [featx.fit(store.path, head="logreg", models_dir=folder.parent / "models", log=lambda m: None)[0]
                 .artifact for store in (fp32, bf16)]
    models = [featx.load(a) for a in artifacts]
    names = [Sidecar.from_json(m.info).method.label for m in models]
    assert names == [f"{TINY} + logreg", f"{TINY} [{engine} bf16] + logreg"]  # compare and cards tell them apart
    paths = [folder / p for p in bf16.row_table().path]
    from_images = models[1].predict_proba(paths, device="cpu")  # features computed as its training's were
    assert np.abs(from_images - models[1].predict_proba(Y)).max() < 1e-4
    assert np.abs(from_images - models[1].predict_proba(X)).max() > 1e-4
    assert f"features in bf16 by {engine}" in card_path(artifacts[1]).read_text()
    assert "features in" not in card_path(artifacts[0]).read_text()
    if importlib.util.find_spec("onnx"):
        said = one_line_error(run("export", "--model", artifacts[1], "--out", folder.parent / "m.onnx"))
        assert f"was trained on features in {engine} bf16; an ONNX graph computes float32 ones" in said


@pytest.mark.skipif(not any(importlib.util.find_spec(e) for e in ("openvino", "onnxruntime")),
                    reason="neither graph engine installed")
def test_auto_races_the_engines_once_per_recipe_and_remembers_the_winner(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_choice, "AUTO_MIN_IMAGES", 8)
    cache = tmp_path / "cache"
    lines = []
    first = featx.extract(make_folder(tmp_path / "one"), cache_dir=cache, log=lines.append, **FAST)
    raced = next(l for l in lines if l.startswith("engine auto:"))
    record = json.loads((cache / "engines.json").read_text())
    (outcome,) = record.values()
    assert f"engine auto: {outcome['engine']}, the fastest of" in raced
    assert set(outcome["images_per_s"]) >= {"eager"} and min(outcome["min_cosine"].values()) >= engines.AGREEMENT
    lines.clear()
    featx.extract(make_folder(tmp_path / "two"), cache_dir=cache, log=lines.append, **FAST)
    assert any(l.startswith(f"engine auto: {outcome['engine']} (the fastest agreeing with eager when raced")
               for l in lines)  # remembered: no second race
    assert first.config["precision"] == "fp32"
    eager = featx.extract(make_folder(tmp_path / "one"), engine="eager", cache_dir=tmp_path / "e",
                          log=lambda m: None, **FAST)
    assert eager.path.name == first.path.name


def test_auto_leaves_out_an_engine_whose_features_differ_and_uses_eager_for_few_images(tmp_path, monkeypatch):
    lines = []
    featx.extract(make_folder(tmp_path / "few"), log=lines.append, **FAST)
    assert "engine auto: eager (12 images are too few to pay for a race)" in lines
    if not any(importlib.util.find_spec(e) for e in ("openvino", "onnxruntime")):
        return
    monkeypatch.setattr(engine_choice, "AUTO_MIN_IMAGES", 8)
    monkeypatch.setattr(engines, "AGREEMENT", 1.5)  # no engine can agree this well: eager, the reference, stays
    lines.clear()
    featx.extract(make_folder(tmp_path / "more"), log=lines.append, **FAST)
    raced = next(l for l in lines if l.startswith("engine auto:"))
    assert raced.startswith("engine auto: eager, the fastest") and "left out for other features:" in raced


def test_engines_and_precisions_refuse_in_one_line_before_any_work(folder, monkeypatch):
    base = ["extract", "--data", folder, "--backbone", TINY, "--weights", "random", "--no-progress"]
    assert "--engine must be one of auto, eager, compile, openvino, onnxruntime, not 'tensorrt'" in \
        one_line_error(run(*base, "--engine", "tensorrt"))
    assert "--engine openvino runs on the CPU; add --device cpu" in \
        one_line_error(run(*base, "--engine", "openvino", "--device", "cuda"))
    assert "onnxruntime has no bfloat16 kernels" in \
        one_line_error(run(*base, "--engine", "onnxruntime", "--precision", "bf16", "--device", "cpu"))
    monkeypatch.setattr(accelerators, "cpu_has_bf16", lambda: False)
    assert "--precision bf16 needs a CPU that computes in bfloat16 natively" in \
        one_line_error(run(*base, "--precision", "bf16", "--device", "cpu"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert "--engine openvino needs openvino: pip install 'featx[openvino]'" in \
        one_line_error(run(*base, "--engine", "openvino", "--device", "cpu"))
    assert not list((folder.parent / "cache").rglob("*.h5"))  # nothing was extracted


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_a_study_at_bfloat16_extracts_its_pool_and_its_target_site_at_that_precision(tmp_path):
    data = make_folder(tmp_path / "data", 12, split="train")
    make_folder(data, 4, split="test", start=30)
    site = make_folder(tmp_path / "site", 6, start=60)
    args = ["study", "--data", data, "--backbones", TINY, "--weights", "random", "--train-sizes", "all", "--repeats",
            "1", "--bootstrap", "100", "--workers", "0", "--cache", tmp_path / "cache", "--target", site]
    plain = run(*args, "--out", tmp_path / "fp32")
    reduced = run(*args, "--out", tmp_path / "bf16", "--precision", "bf16")
    assert plain.exit_code == 0 and reduced.exit_code == 0, reduced.output
    engine = "openvino" if importlib.util.find_spec("openvino") else "eager"
    assert f"{TINY} [{engine} bf16] + logreg" in reduced.output
    assert f"{TINY} + logreg" in plain.output and "bf16" not in plain.output
    caches = {featx.FeatureStore(p).config["precision"] for p in (tmp_path / "cache").rglob("*.h5")}
    assert caches == {"fp32", f"{engine}-bf16"}  # pool and site, each at both precisions: never mixed
    assert len(list((tmp_path / "cache").rglob("*.h5"))) == 4
    units = {p.name for p in (tmp_path / "fp32" / "units").glob("*.json")}
    assert units and not units & {p.name for p in (tmp_path / "bf16" / "units").glob("*.json")}
    assert "--precision must be one of auto, fp32, bf16, not 'int8'" in \
        one_line_error(run(*args, "--out", tmp_path / "bad", "--precision", "int8"))
