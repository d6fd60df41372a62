"""featx suggest and featx audit as files: a CSV in the order to act on, and an HTML contact sheet of the
same images (thumbnails with their rank, path and why), written atomically into their folder.

`featx.suggest` and `featx.audit` (the public API) run labelling.suggesting and labelling.auditing, write
these files, and return the result the CLI prints.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .._core.atomic import write_csv_atomic, write_text_atomic
from .._core.options import feature_variant
from .._core.paths import default_cache_dir
from .figures import thumbnail

SHEET_LIMIT = 200  # thumbnails on one sheet; the CSV lists every row


def suggest(data, backbone: str = "efficientnet_lite0", *, k: int = 20, strategy: str = "typiclust", model=None,
            out="featx-suggest", weights: str = "imagenet", cache_dir=None, seed: int = 0,
            group_pattern: str | None = None, progress: bool = False, log=None):
    """The `k` unlabelled images of `data` to label next (labelling.suggesting), written as
    out/suggestions.csv and out/suggestions.html; returns the Suggestions."""
    from ..labelling.suggesting import suggest_images

    found = suggest_images(data, backbone, k=k, strategy=strategy, model=model, weights=weights,
                           cache_dir=cache_dir, seed=seed, group_pattern=group_pattern, progress=progress, log=log)
    out = Path(out)
    rows = found.rows()
    write_csv_atomic(out / "suggestions.csv", rows)
    title = f"featx suggest: the next {len(rows)} images to label ({strategy} on {backbone})"
    captions = [f"{r['rank']}. {r['path']}<br>{html.escape(r['why'])}" + (f"<br><i>{html.escape(r['patient'])}</i>"
                                                                           if r["patient"] else "") for r in rows]
    write_sheet(out / "suggestions.html", title, [found.root / p for p in found.paths], captions,
                [*found.notes, f"{found.waiting} images were waiting for a label"])
    return found


def audit(data=None, backbone: str | None = None, *, features=None, head: str = "logreg", folds: int = 5,
          duplicate_cosine: float = 0.98, out="featx-audit", weights: str = "imagenet", cache_dir=None,
          seed: int = 0, log=None):
    """Which train labels look wrong (labelling.auditing), on a cache (`features`) or `backbone`'s cache of
    `data`, written as out/audit.csv and out/audit.html; returns the Audit."""
    from ..heads.fitting import resolve_store
    from ..labelling.auditing import audit_labels

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    store = resolve_store(features, data, backbone, weights, feature_variant(), cache_dir, log or (lambda line: None))
    found = audit_labels(store, head=head, folds=folds, seed=seed, duplicate_cosine=duplicate_cosine)
    out = Path(out)
    rows = found.rows()
    if rows:
        write_csv_atomic(out / "audit.csv", rows)
    else:
        write_text_atomic(out / "audit.csv", "rank,path,given,suggested,label_quality,why\n")
    title = f"featx audit: {len(rows)} of {found.audited} train labels look wrong, most suspicious first"
    captions = [f"{r['rank']}. {r['path']}<br>labelled {r['given']}, looks {r['suggested']} "
                f"(quality {r['label_quality']:.3f})<br>{html.escape(r['why'])}" for r in rows]
    write_sheet(out / "audit.html", title, [store.data_root / p for p in found.paths], captions,
                [f"out-of-fold probabilities from {head} by {folds} patient-grouped folds; confident learning by "
                 "cleanlab; validation and test images are never audited"])
    return found


def write_sheet(target: Path, title: str, images: list[Path], captions: list[str], notes=()) -> None:
    """An HTML page of thumbnails in order (at most SHEET_LIMIT), each with its caption (HTML)."""
    cells = []
    for path, caption in list(zip(images, captions))[:SHEET_LIMIT]:
        cells.append(f'<figure>{_thumbnail_tag(path)}<figcaption>{caption}</figcaption></figure>')
    more = f"<p>{len(images) - SHEET_LIMIT} more in the CSV.</p>" if len(images) > SHEET_LIMIT else ""
    said = "".join(f"<p>{html.escape(n)}</p>" for n in notes if n)
    write_text_atomic(target, f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{display:inline-block;width:230px;margin:6px;
vertical-align:top;font-size:12px}} img{{width:224px;height:224px;object-fit:contain;background:#000}}
figcaption{{word-break:break-all}}</style></head><body><h1>{html.escape(title)}</h1>{said}
{''.join(cells)}{more}</body></html>
""")


def _thumbnail_tag(path: Path) -> str:
    """An <img> with the file's thumbnail inlined, or a line saying why there is none."""
    from PIL import Image

    try:
        pixels = thumbnail(path, 224)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is shown as such, the sheet still written
        return f"<p>cannot show {html.escape(path.name)}: {html.escape(str(exc).splitlines()[0] if str(exc) else '')}</p>"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
