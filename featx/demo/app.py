"""The demo page (Gradio): one image with each model's answer and evidence, a batch table, the model cards.

Local by default and by design: bound to 127.0.0.1, no share link, analytics off, system fonts (no
request to Google Fonts or any other host: Gradio serves its own scripts). Every error becomes a
message on the page; the app keeps serving.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from .._core.errors import FeatxError, first_line
from ..data.datasets import image_files
from .answers import Answer, DemoModel, answer, batch_rows

NOTICE = "Research use, not a medical device: not for diagnosis or treatment decisions."


MAX_UPLOAD = "200mb"  # per file: a full-size DICOM is tens of MB
KEPT_SECONDS = 600  # Gradio's own copies of uploads and answers are deleted after this


def _uploads_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _forget(paths) -> None:
    """Remove Gradio's copies of these uploads once answered (never a file of this computer's own)."""
    uploads = _uploads_folder()
    for path in map(Path, paths or []):
        if uploads in path.resolve().parents:
            path.unlink(missing_ok=True)


def build(models: list[DemoModel], *, allow_folder=None):
    """The Gradio Blocks of the page for `models` (answers side by side, in the order given). Folder batches
    read only under `allow_folder` (None: no folders, only uploads)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    allowed = Path(allow_folder).resolve() if allow_folder else None
    with gr.Blocks(title="featx demo", analytics_enabled=False, delete_cache=(KEPT_SECONDS, KEPT_SECONDS)) as page:
        gr.Markdown(f"# featx demo\n**{NOTICE}**\n\n" + "\n".join(f"- {m.name} (`{m.path.name}`)" for m in models))
        with gr.Tab("One image"):
            with gr.Row():
                image = gr.File(label="X-ray (JPEG, PNG, DICOM)", type="filepath")  # any file: DICOM often has no extension
                with gr.Column():
                    heatmap = gr.Checkbox(value=True, label="Show the heatmap (slower)")
                    go = gr.Button("Predict", variant="primary")
            outputs = []
            with gr.Row():
                for m in models:
                    with gr.Column():
                        gr.Markdown(f"### {m.name}")
                        outputs += [gr.Label(label="Class probabilities", num_top_classes=len(m.model.classes_)),
                                    gr.Markdown(), gr.Image(label="Evidence", type="numpy", interactive=False),
                                    gr.Markdown()]
            go.click(lambda path, show: _one(models, path, show), [image, heatmap], outputs, api_name="predict")
        with gr.Tab("Several images"):
            files = gr.File(label="Images", file_count="multiple", type="filepath")
            folder = gr.Textbox(label=f"…or a folder under {allowed}", placeholder=str(allowed),
                                visible=allowed is not None)
            run = gr.Button("Predict all", variant="primary")
            status = gr.Markdown()
            table = gr.Dataframe(label="Least sure first (closest to the threshold)", interactive=False, wrap=True)
            csvs = gr.File(label="featx predict CSV, one per model", file_count="multiple")
            run.click(lambda f, d: _batch(models, f, d, allowed), [files, folder], [status, table, csvs],
                      api_name="batch")
        with gr.Tab("Model cards"):
            for m in models:
                gr.Markdown(m.card())
    return page


def _one(models: list[DemoModel], path, show_heatmap: bool) -> list:
    """Each model's (label, decision, heatmap, note) for one uploaded file; a message, never a traceback. The
    upload is removed once answered."""
    if not path:
        return [None, "Drop or pick an image first.", None, ""] * len(models)
    out = []
    try:
        for m in models:
            try:
                a = answer(m, path, heatmap=show_heatmap)
            except Exception as exc:  # the page keeps serving whatever happens inside one model
                a = Answer(None, f"**featx could not answer**: {type(exc).__name__}: {first_line(exc)}", None)
            out += [a.probabilities, a.decision, a.heatmap, a.note]
    finally:
        _forget([path])
    return out


def _batch(models: list[DemoModel], files, folder: str, allowed: Path | None):
    """(status, table, CSV paths) for uploaded files or a folder under the one the operator allowed. The CSVs
    (they hold this computer's paths) are handed to Gradio's cache, which deletes them after KEPT_SECONDS; the
    folder they were written in and the uploads are removed before the answer leaves."""
    out = Path(tempfile.mkdtemp(prefix="featx-demo-"))
    try:
        paths = [Path(f) for f in files or []]
        if folder and folder.strip():
            paths += image_files([_allowed(folder.strip(), allowed)])
        if not paths:
            return "Pick files or name a folder first.", None, None
        rows, csvs = [], []
        for i, m in enumerate(models):
            csvs.append(out / f"{i + 1}-{m.path.stem}.csv")
            rows += batch_rows(m, paths, csvs[-1])
        from gradio.processing_utils import save_file_to_cache

        served = [save_file_to_cache(p, str(_uploads_folder())) for p in csvs]
    except FeatxError as exc:
        return f"**{first_line(exc)}**", None, None
    finally:
        shutil.rmtree(out, ignore_errors=True)
        _forget(files)
    import pandas as pd

    unreadable = sum(1 for r in rows if r["margin"] is None) // len(models)
    status = f"{len(paths)} files" + (f", {unreadable} unreadable (listed last)" if unreadable else "")
    return status, pd.DataFrame(rows), served


def _allowed(folder: str, root: Path | None) -> str:
    """`folder` if it lies under `root` (links resolved); one line otherwise."""
    if root is None:
        raise FeatxError("Folders are off on this page: upload the images, or start featx demo with --allow-folder DIR")
    resolved = Path(folder).resolve()
    if resolved != root and root not in resolved.parents:
        raise FeatxError(f"Only folders under {root} can be read on this page")
    return str(resolved)


def theme():
    """Gradio's default look with the system's fonts, so the page asks no font server for anything."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def launch(model_paths, *, host: str = "127.0.0.1", port: int = 7860, trust_pickle: bool = False,
           allow_folder=None, block: bool = True, log=print):
    """Load the models, warm them up, serve the page; returns (page, url) when `block` is False.
    `allow_folder`: a folder whose subfolders the batch tab may read on this computer (None: uploads only)."""
    started = time.perf_counter()
    if not model_paths:
        raise FeatxError("featx demo needs at least one --model")
    if allow_folder is not None and not Path(allow_folder).is_dir():
        raise FeatxError(f"--allow-folder {allow_folder}: no such folder")
    models = [DemoModel.open(p, trust_pickle=trust_pickle) for p in model_paths]
    _warm_up(models)
    page = build(models, allow_folder=allow_folder)
    page.queue(default_concurrency_limit=1)  # one prediction at a time: the CPU is shared anyway
    _, url, _ = page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
                            prevent_thread_lock=True, show_error=False, theme=theme(), max_file_size=MAX_UPLOAD)
    log(f"featx demo ready at {url} in {time.perf_counter() - started:.1f} s ({NOTICE})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: bound to {host}: anyone who can reach this address can upload images (up to {MAX_UPLOAD} "
            "each) and read every model's answers and cards" +
            (f", and list and predict the images under {Path(allow_folder).resolve()}" if allow_folder else "") +
            "; there is no login")
    if block:
        try:
            page.block_thread()
        except KeyboardInterrupt:
            page.close()
    return page, url


def _warm_up(models: list[DemoModel]) -> None:
    """Build each backbone once now, on a generated image, so the first request is not the slow one."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "warm-up.png"
        Image.fromarray(np.full((64, 64), 128, np.uint8)).save(path)
        for m in models:
            answer(m, path, heatmap=False)
