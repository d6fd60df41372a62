"""featx demo through gradio_client against a launched app: the answers are featx predict's, bad files get
a message, the batch CSV is featx predict's, and the page asks no other host for anything."""

from __future__ import annotations

import csv
import re
import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow  # a Gradio server for the module


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A logreg head (with heatmaps), a kNN head (without) and a fine-tune, served on 127.0.0.1."""
    from featx.demo.app import launch

    root = tmp_path_factory.mktemp("demo")
    data = make_folder(root / "data", per_class=8)
    common = ["--weights", "random", "--cache", root / "cache"]
    assert run("extract", "--data", data, "--backbone", TINY, "--workers", "0", "--no-progress", "--val-fraction",
               "0.3", *common).exit_code == 0
    models = []
    for head in ("logreg", "knn"):
        fitted = run("fit", "--backbone", TINY, "--data", data, "--head", head, "--threshold", "youden", *common)
        assert fitted.exit_code == 0, fitted.output
        models.append(Path(fitted.stdout.strip().splitlines()[-1]))
    tuned = run("finetune", "--data", data, "--backbone", TINY, "--workers", "0", "--no-progress", "--image-size", "64",
                "--batch-size", "4", "--epochs", "1", "--val-fraction", "0.3", "--out", root / "run", *common)
    assert tuned.exit_code == 0, tuned.output
    models.append(root / "run" / "model.pt")
    page, url = launch(models, port=_free_port(), block=False, allow_folder=data, log=lambda m: None)
    yield data, models, url, gradio_client.Client(url, verbose=False)
    page.close()


def _probabilities(label: dict) -> dict:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_one_prediction_is_featx_predict_with_its_threshold_and_evidence(served):
    data, models, _, client = served
    image = sorted((data / "PNEUMONIA").iterdir())[0]
    out = client.predict(gradio_client.handle_file(str(image)), True, api_name="/predict")
    assert len(out) == 4 * len(models)
    for i, model in enumerate(models):
        label, decision, heatmap, note = out[4 * i: 4 * i + 4]
        [row] = featx.predict(model, [image], device="cpu")
        expected = {k.removeprefix("p_"): v for k, v in row.items() if k.startswith("p_")}
        assert _probabilities(label) == pytest.approx(expected, abs=1e-6)
        assert f"**{row['predicted']}**" in decision
        loaded = featx.load(model)
        assert f"{loaded.threshold:.4f}" in decision and loaded.rule.describe()[1:] in decision
        if i == 1:  # kNN: no map, and the page says why
            assert heatmap is None and "No heatmap" in note
        else:
            assert heatmap and Path(heatmap).is_file() and note.startswith("Evidence for")


@pytest.mark.parametrize("kind", ["text", "dicom without pixels"])
def test_a_bad_file_gets_a_message_and_the_app_keeps_serving(served, tmp_path, kind):
    data, models, _, client = served
    if kind == "text":
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
    else:
        pydicom = pytest.importorskip("pydicom")
        from test_dicom import full_range, write_dicom

        bad = write_dicom(tmp_path / "report.dcm", full_range(3))
        ds = pydicom.dcmread(bad)
        del ds.PixelData
        ds.save_as(bad)
    out = client.predict(gradio_client.handle_file(str(bad)), True, api_name="/predict")
    assert all("Could not read this file" in out[4 * i + 1] for i in range(len(models)))
    assert all(out[4 * i + 2] is None for i in range(len(models)))
    good = client.predict(gradio_client.handle_file(str(sorted((data / "NORMAL").iterdir())[0])), False,
                          api_name="/predict")
    assert good[0]["confidences"]


def test_the_batch_csv_is_featx_predicts(served, tmp_path):
    data, models, _, client = served
    folder = data / "NORMAL"
    status, table, csvs = client.predict([], str(folder), api_name="/batch")
    assert status.startswith(f"{len(list(folder.iterdir()))} files")
    expected = tmp_path / "expected.csv"
    assert run("predict", "--model", models[0], folder, "--output", expected, "--device", "cpu").exit_code == 0
    got = list(csv.DictReader(open(csvs[0])))
    want = list(csv.DictReader(open(expected)))
    assert [r["path"] for r in got] == [r["path"] for r in want] and [r["predicted"] for r in got] == \
        [r["predicted"] for r in want]
    assert all(abs(float(a[k]) - float(b[k])) <= 1e-6 for a, b in zip(got, want) for k in a if k.startswith("p_"))
    for name in {r[0] for r in table["data"]}:  # each model's rows, least sure first
        margins = [r[-1] for r in table["data"] if r[0] == name]
        assert margins == sorted(margins) and len(margins) == len(want)


def test_folders_only_under_the_allowed_one_and_nothing_left_behind(served, tmp_path):
    """A client cannot list a folder outside --allow-folder (nor anywhere without it); uploads and each
    batch's folder (its CSV holds the server's paths) are removed once the answer is out."""
    data, models, _, client = served
    private = tmp_path / "private_scans"
    private.mkdir()
    shutil.copy(sorted((data / "NORMAL").iterdir())[0], private / "JOHN_DOE_1961-02-03.jpeg")
    for folder in (private, data / ".." / private.name, data / "NORMAL" / ".." / ".." / ".."):
        status, table, csvs = client.predict([], str(folder), api_name="/batch")
        assert status.startswith("**Only folders under") and not csvs and "JOHN_DOE" not in str(table)
    before = set(Path(tempfile.gettempdir()).glob("featx-demo-*"))
    image = sorted((data / "PNEUMONIA").iterdir())[0]
    status, _, csvs = client.predict([gradio_client.handle_file(str(image))], "", api_name="/batch")
    assert status.startswith("1 files") and csvs
    client.predict(gradio_client.handle_file(str(image)), False, api_name="/predict")
    from gradio.utils import get_upload_folder

    for _ in range(50):  # the clean-up runs right after each answer
        left = set(Path(tempfile.gettempdir()).glob("featx-demo-*")) - before
        uploads = [p for p in Path(get_upload_folder()).rglob(image.name)]
        if not left and not uploads:
            break
        time.sleep(0.1)
    assert not left and not uploads and image.is_file()


def test_folders_are_off_unless_allowed(served):
    from featx.demo.app import launch

    data, models, _, _ = served
    page, url = launch(models[:1], port=_free_port(), block=False, log=lambda m: None)
    try:
        status, _, csvs = gradio_client.Client(url, verbose=False).predict([], str(data), api_name="/batch")
    finally:
        page.close()
    assert status.startswith("**Folders are off") and not csvs


def test_the_page_and_its_styles_ask_no_other_host(served):
    _, _, url, _ = served
    html = urllib.request.urlopen(url).read().decode()
    css = urllib.request.urlopen(url.rstrip("/") + "/theme.css").read().decode()
    assert "Research use, not a medical device" in html or "featx demo" in html
    fetched = re.findall(r"""(?:src|href)=["'](https?://[^"']+)""", html) + re.findall(r"url\((https?://[^)]+)\)", css) \
        + re.findall(r"@import\s+(?:url\()?[\"']?(https?://[^\"')]+)", css)
    assert not [u for u in fetched if not u.startswith(("http://127.0.0.1", "http://localhost"))], fetched


def test_demo_without_a_model_is_one_line():
    result = run("demo")
    assert result.exit_code != 0 and "--model" in result.output
