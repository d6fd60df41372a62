"""What the demo page shows for images, computed without the page: probabilities, decisions, heatmaps, a table.

Kept apart from the Gradio layout (demo.app) so that every answer is the one `featx predict` and
`featx explain` give, and can be tested without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError, first_line
from ..artifacts.explaining import LINEAR_HEADS, explain
from ..artifacts.model_card import card_path
from ..artifacts.prediction import predict
from ..artifacts.predictors import FineTunedClassifier, load
from ..data.images import load_image
from ..studies.cards import refresh_card


@dataclass
class DemoModel:
    """A loaded model and what the page says about it."""

    path: Path
    model: object  # ImageClassifier or FineTunedClassifier

    @classmethod
    def open(cls, path, *, trust_pickle: bool = False) -> "DemoModel":
        return cls(Path(path), load(path, trust_pickle=trust_pickle))

    @property
    def name(self) -> str:
        return self.model.sidecar.method.label

    @property
    def explainable(self) -> bool:
        return isinstance(self.model, FineTunedClassifier) or self.model.sidecar.method.head in LINEAR_HEADS

    def why_no_heatmap(self) -> str:
        return (f"No heatmap: a {self.model.info['head']} head has no exact class activation map (featx draws one for "
                f"linear heads, {', '.join(LINEAR_HEADS)}, and Grad-CAM for fine-tunes).")

    def card(self) -> str:
        """The model card's Markdown without its YAML front matter (the saved card, else one written now with
        what featx has measured of this model)."""
        path = card_path(self.path)
        text = (path if path.is_file() else refresh_card(self.path)).read_text()
        if text.startswith("---\n"):
            text = text.split("\n---\n", 1)[-1]
        return text.strip()


@dataclass
class Answer:
    """One model's answer for one image: probabilities, the decision in words, a heatmap or why not."""

    probabilities: dict | None
    decision: str
    heatmap: np.ndarray | None
    note: str = ""


def answer(m: DemoModel, image, *, heatmap: bool = True) -> Answer:
    """`featx predict`'s row for `image` in words, and `featx explain`'s heatmap over the image."""
    try:
        [row] = predict(m.model, [image], device="cpu")
    except FeatxError as exc:
        return Answer(None, f"**Could not read this file**: {first_line(exc)}", None)
    if row["error"]:
        return Answer(None, f"**Could not read this file**: {row['error']}", None)
    classes = [str(c) for c in m.model.classes_]
    probabilities = {c: row[f"p_{c}"] for c in classes}
    rule = m.model.rule.describe()  # the rule featx predict states
    decision = f"**{row['predicted']}**. {rule[:1].upper() + rule[1:]}."
    if row.get("set"):
        decision += (f"\n\n**Prediction set: {row['set']}** ({m.model.local.sets.confidence:.0%} sets calibrated on "
                     f"{m.model.local.site}; see the card).")
    if not heatmap:
        return Answer(probabilities, decision, None)
    if not m.explainable:
        return Answer(probabilities, decision, None, m.why_no_heatmap())
    try:
        result = explain(m.model, image)
    except FeatxError as exc:
        return Answer(probabilities, decision, None, f"No heatmap: {first_line(exc)}")
    return Answer(probabilities, decision, overlay_array(image, result),
                  f"Evidence for {result['target']}: {result['method']}.")


def overlay_array(image, result: dict, alpha: float = 0.35) -> np.ndarray:
    """The image in gray with the heatmap (a jet colour scale) over the part the model saw, as uint8 RGB."""
    gray = np.asarray(load_image(image).convert("L"), np.float32) / 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    heat = result["heatmap"]
    colour = np.stack([np.clip(1.5 - np.abs(4 * heat - k), 0, 1) for k in (3, 2, 1)], axis=2)
    left, top, right, bottom = result["box"]
    seen = np.zeros(heat.shape, bool)
    seen[top:bottom, left:right] = True
    rgb[seen] = (1 - alpha) * rgb[seen] + alpha * colour[seen]
    return (rgb * 255).round().astype(np.uint8)


def batch_rows(m: DemoModel, paths: list, csv_path) -> list[dict]:
    """`featx predict --output csv_path` for `paths`, and the rows for the page, least sure first: the
    closest to the threshold (or to an even split for more classes) at the top, unreadable files last."""
    rows = predict(m.model, paths, device="cpu", output=csv_path)
    classes = [str(c) for c in m.model.classes_]
    shown = []
    for row in rows:
        if row["error"]:
            shown.append({"model": m.name, "file": Path(row["path"]).name, **{f"p_{c}": None for c in classes},
                          "decision": f"unreadable: {row['error']}", **({"set": None} if "set" in row else {}),
                          "margin": None})
            continue
        p = np.array([row[f"p_{c}"] for c in classes])
        [margin] = m.model.rule.margin(p[None])
        shown.append({"model": m.name, "file": Path(row["path"]).name, **{f"p_{c}": round(float(v), 4)
                                                                        for c, v in zip(classes, p)},
                      "decision": row["predicted"], **({"set": row["set"]} if "set" in row else {}),
                      "margin": round(float(margin), 4)})
    return sorted(shown, key=lambda r: (r["margin"] is None, r["margin"] or 0.0))

