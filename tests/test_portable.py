"""Heads saved without pickle (skops with featx's trusted types), older pickles only on trust, and conversion."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.base import is_classifier

import featx
from featx.artifacts.format import sidecar_digest
from featx.cli import main
from featx.heads.specs import HEAD_NAMES

from conftest import one_line_error, three_way, toy_features, write_store

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
FITS = [(head, False) for head in HEAD_NAMES] + [("logreg", True), ("lightgbm", True)]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Every head, in memory and out of core, on one small cache: {(head, out_of_core): artifact}."""
    root = tmp_path_factory.mktemp("heads")
    X, y = toy_features(150, d=6)
    store = write_store(root / "toy.h5", X, y, three_way(150))
    found = {}
    for head, out_of_core in FITS:
        [result] = featx.fit(store.path, head=head, out_of_core=out_of_core, models_dir=root / "m", log=lambda m: None)
        found[(head, out_of_core)] = result.artifact
    return store, found


@pytest.mark.parametrize("head,out_of_core", FITS)
def test_every_head_is_saved_without_pickle_and_predicts_as_it_did_when_fitted(fitted, head, out_of_core):
    from featx.artifacts.format import load_predictions

    store, found = fitted
    artifact = found[(head, out_of_core)]
    assert artifact.suffix == ".skops" and json.loads(artifact.with_suffix(".json").read_text())["serialization"] == "skops"
    model = featx.load(artifact)
    assert is_classifier(model.head) and model.head.get_params()  # an ordinary scikit-learn estimator
    for split, saved in load_predictions(artifact).items():  # probabilities of the estimator in memory at fit time
        X, _ = store.arrays(split)
        assert np.abs(model.predict_proba(X) - saved["proba"]).max() <= 1e-6


def _as_pickle(artifact: Path, head, folder: Path) -> Path:
    """The artifact as featx wrote heads before format 3: a joblib file and a format-2 sidecar naming it."""
    folder.mkdir(exist_ok=True)
    legacy = folder / artifact.with_suffix(".joblib").name
    joblib.dump(head, legacy)
    info = json.loads(artifact.with_suffix(".json").read_text())
    info.pop("serialization")
    info.update(format=2, file=legacy.name, sha256=hashlib.sha256(legacy.read_bytes()).hexdigest())
    info["sidecar_sha256"] = sidecar_digest({k: v for k, v in info.items() if k != "sidecar_sha256"})
    legacy.with_suffix(".json").write_text(json.dumps(info))
    shutil.copy(artifact.with_suffix(".predictions.npz"), legacy.with_suffix(".predictions.npz"))
    return legacy


@pytest.mark.parametrize("head,out_of_core", FITS)
def test_an_old_pickle_loads_only_on_trust_and_converts_once_to_the_same_probabilities(fitted, tmp_path, head,
                                                                                        out_of_core):
    store, found = fitted
    legacy = _as_pickle(found[(head, out_of_core)], featx.load(found[(head, out_of_core)]).head, tmp_path / "old")
    X, _ = store.arrays("test")
    with pytest.raises(featx.FeatxError, match="pickle"):
        featx.load(legacy)
    before = featx.load(legacy, trust_pickle=True).predict_proba(X)
    assert "--trust-pickle" in one_line_error(run("convert", "--model", legacy))
    converted = run("convert", "--model", legacy, "--trust-pickle")
    assert converted.exit_code == 0, converted.output
    new = Path(converted.stdout.strip())
    assert new == legacy.with_suffix(".skops") and not legacy.exists()
    model = featx.load(new)
    assert np.abs(model.predict_proba(X) - before).max() <= 1e-6
    assert model.info["converted_from"]["file"] == legacy.name
    assert "nothing to convert" in one_line_error(run("convert", "--model", new))
    listed = run("compare", "--models", tmp_path / "old")
    assert listed.exit_code == 0, listed.output


@pytest.mark.parametrize("kind", ["head", "booster"])
def test_the_heads_featx_saved_before_convert_to_the_same_probabilities(tmp_path, kind):
    folder = tmp_path / kind
    shutil.copytree(LEGACY / kind, folder)
    legacy = folder / Path(EXPECTED[kind]["artifact"]).name
    new = featx.convert_artifact(legacy, trust_pickle=True)
    if kind == "booster":
        proba = featx.load(new).predict_proba(np.array(EXPECTED["booster"]["X"], np.float32))
    else:
        proba, _ = featx.load(new).image_proba([LEGACY / "images" / p for p in EXPECTED["images"]], device="cpu")
    assert np.abs(proba - np.array(EXPECTED[kind]["proba"])).max() <= 1e-6


def test_a_converted_head_left_beside_its_pickle_by_a_kill_is_one_model(fitted, tmp_path):
    _, found = fitted
    artifact = found[("logreg", False)]
    legacy = _as_pickle(artifact, featx.load(artifact).head, tmp_path / "old")
    kept = legacy.read_bytes()
    featx.convert_artifact(legacy, trust_pickle=True)
    legacy.write_bytes(kept)  # as if killed after the new sidecar, before the pickle was removed
    from featx.artifacts.catalogue import find_artifacts

    assert find_artifacts(tmp_path / "old") == [legacy.with_suffix(".skops")]
    with pytest.raises(featx.FeatxError, match="not the file its sidecar describes"):
        featx.load(legacy, trust_pickle=True)


class Payload:
    """What a crafted model file would run while loading: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _signed(artifact: Path, raw: bytes, folder: Path, suffix: str, **fields) -> Path:
    """`raw` as a model file with a sidecar that matches it: only the loading rules can stop it."""
    folder.mkdir(exist_ok=True)
    crafted = folder / f"crafted{suffix}"
    crafted.write_bytes(raw)
    info = json.loads(artifact.with_suffix(".json").read_text())
    info.pop("predictions"), info.pop("splits")
    info.update(file=crafted.name, sha256=hashlib.sha256(raw).hexdigest(), **fields)
    info = {k: v for k, v in info.items() if v is not None}
    info["sidecar_sha256"] = sidecar_digest({k: v for k, v in info.items() if k != "sidecar_sha256"})
    crafted.with_suffix(".json").write_text(json.dumps(info))
    return crafted


def test_a_crafted_pickle_is_refused_without_running_it(fitted, tmp_path):
    _, found = fitted
    marker = tmp_path / "marker"
    joblib.dump(Payload(marker), tmp_path / "payload.joblib")
    raw = (tmp_path / "payload.joblib").read_bytes()
    crafted = _signed(found[("logreg", False)], raw, tmp_path / "m", ".joblib", format=2, serialization=None)
    with pytest.raises(featx.FeatxError, match="runs any code"):
        featx.load(crafted)
    assert "pickle" in one_line_error(run("predict", "--model", crafted, tmp_path))
    assert "--trust-pickle" in one_line_error(run("convert", "--model", crafted))
    assert not marker.exists()
    joblib.load(crafted)  # the payload is real: unpickling it runs
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("payload", ["type", "function"])
def test_a_crafted_skops_file_is_refused_without_running_it(fitted, tmp_path, payload):
    _, found = fitted
    marker = tmp_path / "marker"
    obj = Payload(marker) if payload == "type" else {"run": exec}
    raw = sio.dumps(obj)
    crafted = _signed(found[("logreg", False)], raw, tmp_path / "m", ".skops")
    line = one_line_error(run("predict", "--model", crafted, tmp_path))
    assert "does not trust" in line and ("Payload" in line if payload == "type" else "exec" in line)
    assert not marker.exists()
    if payload == "type":  # the payload is real: skops told to trust the type runs it
        sio.loads(raw, trusted=[f"{Payload.__module__}.Payload"])
        assert marker.read_text() == "ran"
