"""What `featx robustness` measured, kept beside the models: one result per split, read by the report and
by the model cards (each card shows only the rows of its own model file)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._core.atomic import write_text_atomic

COLUMNS = ("method", "corruption", "severity", "n", "roc_auc", "roc_auc_low", "roc_auc_high", "accuracy",
           "sensitivity", "specificity")


@dataclass
class Robustness:
    """One row (COLUMNS) per method × corruption × severity; the clean rows have corruption "none", severity 0."""

    split: str
    data_root: str
    corruptions: list[str]
    severities: list[int]
    methods: list[str]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    created: str = ""
    # method name -> the sha256 of the model file it names: a model card shows only the rows of its own model
    models: dict = field(default_factory=dict)

    def rows_of(self, model_sha256: str) -> list[dict]:
        """The rows measured on the model whose file has this sha256 (none from older results, which did
        not record it)."""
        return [r for r in self.rows if self.models.get(r["method"]) == model_sha256]

    def auc(self, method: str, corruption: str = "none", severity: int = 0) -> float | None:
        found = [r["roc_auc"] for r in self.rows if (r["method"], r["corruption"], r["severity"]) ==
                 (method, corruption, severity)]
        return found[0] if found else None

    def summary(self) -> list[dict]:
        """Per method: clean ROC-AUC, the mean over every corrupted cell, the relative drop (the mean of
        1 - AUC / clean AUC over corruptions and severities: mCE's idea, against the method's own clean
        AUC) and the worst cell."""
        out = []
        for method in self.methods:
            clean = self.auc(method)
            cells = [r for r in self.rows if r["method"] == method and r["severity"] > 0 and r["roc_auc"] is not None]
            entry = {"method": method, "clean": clean, "mean": None, "relative_drop": None, "worst": None}
            if cells:
                entry["mean"] = float(np.mean([r["roc_auc"] for r in cells]))
                worst = min(cells, key=lambda r: r["roc_auc"])
                entry["worst"] = (worst["corruption"], worst["severity"], worst["roc_auc"])
                if clean:
                    entry["relative_drop"] = float(np.mean([1 - r["roc_auc"] / clean for r in cells]))
            out.append(entry)
        return out

    def lines(self) -> list[str]:
        """The terminal table: a summary per method, then ROC-AUC per corruption at each severity."""
        summary = self.summary()
        number = {m: f"[{i + 1}]" for i, m in enumerate(self.methods)}
        out = [f"robustness on the {self.split} split of {self.data_root} (ROC-AUC; relative drop: mean of "
               "1 - AUC / clean AUC over corruptions and severities)"]
        for s in summary:
            worst = "" if s["worst"] is None else f"; worst {s['worst'][0]}:{s['worst'][1]} {s['worst'][2]:.3f}"
            out.append(f"{number[s['method']]} {s['method']}: clean {_num(s['clean'])}, corrupted mean "
                       f"{_num(s['mean'])}, relative drop {_percent(s['relative_drop'])}{worst}")
        severity_text = "/".join(str(s) for s in self.severities)
        header = [f"corruption (severity {severity_text})", *[number[m] for m in self.methods]]
        table = [[c, *["/".join(_num(self.auc(m, c, s)) for s in self.severities) for m in self.methods]]
                 for c in self.corruptions]
        width = max(len(cell) for row in table for cell in row[1:])
        first = max(len(header[0]), *(len(row[0]) for row in table))
        out.append("")
        for row in [header, *table]:
            out.append(row[0].ljust(first) + "".join(f"  {cell:>{width}}" for cell in row[1:]))
        out += [f"note: {n}" for n in self.notes]
        return out


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def results_path(models_dir, split: str) -> Path:
    return Path(models_dir) / f"robustness-{split}.json"


def save_robustness(result: Robustness, models_dir: Path) -> None:
    write_text_atomic(results_path(models_dir, result.split), json.dumps(asdict(result), indent=1) + "\n")


def saved_robustness(models_dir, split: str) -> Robustness | None:
    """The results `featx robustness` saved for `split` of the models in `models_dir`, if any; whose models
    they are is in `models` (each row's model file's sha256)."""
    path = results_path(models_dir, split)
    if not path.is_file():
        return None
    return Robustness(**json.loads(path.read_text()))
