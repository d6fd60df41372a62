"""A model card beside every artifact (`<model>.md`): Hugging Face's layout, YAML front matter first.

Everything on it is read from the checked sidecar and the saved predictions: the data (fingerprint,
counts by class and split, how patients were grouped), the recipe (backbone, weights, preprocessing,
head and its chosen parameters), metrics with bootstrap intervals on each evaluated split, the
threshold and how it was chosen, and, when a caller passes them, robustness and shift results and
the intended use. The card is for people; the sidecar stays the record featx trusts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._core.atomic import write_text_atomic
from ..evaluation.decision import DecisionRule
from ..evaluation.sets import judged_splits
from ..evaluation.significance import bootstrap_ci, point_metrics
from ..models.numerics import Numerics
from .format import checked_sidecar, load_predictions
from .local import LocalCalibration
from .sidecar import Sidecar

SHOWN = (("roc_auc", "ROC-AUC"), ("balanced_accuracy", "Balanced accuracy"), ("sensitivity", "Sensitivity"),
         ("specificity", "Specificity"))
N_BOOT = 1000
DEFAULT_USE = ("Research on the images described under Training data. Not a medical device: not for diagnosis "
               "or treatment decisions.")
DEFAULT_LIMITS = ("Tested only on held-out images of the same dataset and centre(s) as its training images; "
                  "other scanners, populations, ages or protocols may give different results. Check the model on "
                  "your own data (featx shift, featx robustness) before relying on it.")


def card_path(artifact) -> Path:
    return Path(artifact).with_suffix(".md")


def use_path(artifact) -> Path:
    """Where the intended use and limitations someone wrote for a model are kept between cards."""
    return Path(artifact).with_suffix(".use.json")


def choice_path(artifact) -> Path:
    """Where a choice made after the model was trained is kept (featx study chose it as its leader)."""
    return Path(artifact).with_suffix(".chosen.json")


def record_choice(artifact, *, split: str, methods: int, study: str, dataset_split: str | None = None) -> bool:
    """Keep that featx study chose this model among `methods` by its ROC-AUC on `split` (the model's own name
    for those images; `dataset_split`: the dataset's, where it differs): every later card says so, its
    figures on that split are no longer untouched by any choice. False when it was kept already."""
    named = {"dataset_split": dataset_split} if dataset_split and dataset_split != split else {}
    text = json.dumps({"split": split, "methods": methods, "study": study, **named}) + "\n"
    path = choice_path(artifact)
    if path.is_file() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def forget_choice(artifact, *, study: str) -> bool:
    """Drop the choice `study` recorded of this model (it no longer chooses among methods); True when there
    was one. A choice another study recorded stays."""
    path = choice_path(artifact)
    if not path.is_file() or json.loads(path.read_text()).get("study") != study:
        return False
    path.unlink()
    return True


def write_model_card(artifact, *, robustness: list[dict] | None = None, shift: list[str] | None = None,
                     intended_use: str | None = None, limitations: str | None = None) -> Path:
    """Write `<model>.md` for the artifact at `artifact` (atomically) and return its path. Intended use
    and limitations given once are kept (`<model>.use.json`) for every later card of the model, and so is
    a study's choice of it (`<model>.chosen.json`)."""
    info = checked_sidecar(artifact)
    chosen = json.loads(choice_path(artifact).read_text()) if choice_path(artifact).is_file() else None
    kept = json.loads(use_path(artifact).read_text()) if use_path(artifact).is_file() else {}
    if intended_use or limitations:
        kept = {**kept, **{k: v for k, v in (("intended_use", intended_use), ("limitations", limitations)) if v}}
        write_text_atomic(use_path(artifact), json.dumps(kept, indent=2) + "\n")
    intended_use, limitations = kept.get("intended_use"), kept.get("limitations")
    predictions = load_predictions(artifact, info) if info.get("predictions") else {}
    text = model_card(info, predictions, robustness=robustness, shift=shift, intended_use=intended_use,
                      limitations=limitations, chosen=chosen)
    path = card_path(artifact)
    write_text_atomic(path, text)
    return path


def model_card(info: dict, predictions: dict, *, robustness=None, shift=None, intended_use=None,
               limitations=None, chosen: dict | None = None) -> str:
    """The card's Markdown: front matter, then details, data, evaluation, threshold, use."""
    sidecar = Sidecar.from_json(info)
    saved = {split: (m or {}).get("ci") for split, m in (info.get("metrics") or {}).items()}
    scores = {split: _scores(p, info.get("threshold"), intervals=split != "train", saved=saved.get(split))
              for split, p in predictions.items()}
    sections = [_front_matter(info, sidecar, scores), f"# {sidecar.method.label}\n",
                "**Research use, not a medical device.**\n", _details(info, sidecar), _data(info, sidecar, predictions),
                _evaluation(scores, chosen), _threshold(info)]
    if info.get("target"):
        sections.append(_target(info["target"], "target" in predictions))
    local = LocalCalibration.of(info)
    if local:
        sections.append(_local(local))
    sections.append(_robustness(robustness) if robustness else
                    "## Robustness (featx robustness)\n\nNot measured for this model.\n")
    sections.append("## Split shift\n\n" + ("\n".join(f"- {line.strip()}" for line in shift) if shift else
                                              "Not measured on this model's features and images.") + "\n")
    sections.append(f"## Intended use\n\n{intended_use or DEFAULT_USE}\n\n## Limitations\n\n{limitations or _limits(local)}\n")
    return "\n".join(sections)


def _scores(p: dict, threshold, intervals: bool, saved: dict | None = None) -> dict:
    """Point metrics and 95% intervals of one split (intervals only where asked and the split has both
    classes): those fit or finetune saved with the model (the same bootstrap), computed only for older ones."""
    y, proba = np.asarray(p["y"]), np.asarray(p["proba"])
    point = point_metrics(y, proba, threshold if threshold is not None else 0.5)
    if not intervals or len(np.unique(y)) < 2:
        ci = {}
    elif saved:
        ci = {name: None if bounds is None else tuple(bounds) for name, bounds in saved.items()}
    else:
        ci = bootstrap_ci(y, proba, threshold if threshold is not None else 0.5, n_boot=N_BOOT)
    return {"n": len(y), "point": point, "ci": ci}


def _front_matter(info: dict, sidecar: Sidecar, scores: dict) -> str:
    """YAML the Hub reads: library, tags, dataset, and a model-index with each split's metrics."""
    split = next(iter(judged_splits(scores)), None)
    lines = ["---", "library_name: featx", "pipeline_tag: image-classification",
             f"tags: [featx, image-classification, {_yaml(sidecar.method.backbone)}, {_yaml(sidecar.method.head)}]"]
    if sidecar.dataset:
        lines.append(f"datasets: [{_yaml(sidecar.dataset)}]")
    lines += ["model-index:", f"- name: {_yaml(sidecar.method.label)}", "  results:"]
    for name in judged_splits(scores):
        lines += ["  - task: {type: image-classification}",
                  f"    dataset: {{name: {_yaml(sidecar.dataset or 'images')}, type: featx-folder, split: {name}}}",
                  "    metrics:"]
        for key, label in SHOWN:
            value = scores[name]["point"].get(key)
            if value is not None:
                lines.append(f"    - {{type: {key}, value: {value:.4f}, name: {_yaml(label)}}}")
    if split is None:
        lines.append("  - {task: {type: image-classification}, metrics: []}")
    lines.append("---\n")
    return "\n".join(lines)


def _yaml(text) -> str:
    return json.dumps(str(text))  # a JSON string is a YAML string


def _numbers(config: dict, sidecar: Sidecar) -> str:
    """A head on a CPU's bfloat16 features says so, and what featx computes where that cannot run."""
    wanted = Numerics.options(config.get("compute"))
    if sidecar.finetuned or not Numerics.words(config.get("compute")):
        return ""
    return (f"; features in {wanted['precision']} by {wanted['engine']} (featx computes them so on a CPU with native "
            "bfloat16 and that engine, else in float32, which changes its probabilities; featx export refuses it)")


def _details(info: dict, sidecar: Sidecar) -> str:
    c = info["features"]["config"]
    data_config = c.get("data_config") or {}
    size = data_config.get("input_size") or [None, None, None]
    rows = [("Kind", "fine-tuned network" if sidecar.finetuned else "classical head on frozen backbone features"),
            ("Backbone", f"{c.get('backbone')} (timm `{c.get('timm_model')}`)"),
            ("Weights", f"{c.get('weights_source')}, sha256 `{str(c.get('weights_sha256'))[:16]}…`"),
            ("Preprocessing", f"{size[1]}x{size[2]} px, {data_config.get('interpolation')} resize, crop_pct "
                              f"{data_config.get('crop_pct')}, mean {data_config.get('mean')}, std {data_config.get('std')}; "
                              f"decode {sidecar.recipe.decode}; TTA {sidecar.recipe.tta}" + _numbers(c, sidecar)),
            ("Head" if not sidecar.finetuned else "Training",
             f"{info['head']}, {_params(info.get('params') or {})}" +
             (f" (chosen by {info['selection']['method']})" if info.get("selection") else "")),
            ("File", f"`{info.get('file')}` ({info.get('serialization', 'joblib')}), sha256 `{str(info.get('sha256'))[:16]}…`"),
            ("Made", f"{info.get('created')} with featx {c.get('featx_version') or info.get('versions', {}).get('featx', '?')}"),
            ]
    if info.get("selected_by"):
        rows.append(("Epoch", f"{info.get('best_epoch')} of {len(info.get('history') or [])}, selected by "
                              f"{info['selected_by']} ({info.get('stopped')})"))
    if info.get("started_from"):
        rows.append(("Started from", f"the featx fine-tune `{info['started_from']['path']}`, sha256 "
                                     f"`{info['started_from']['sha256'][:16]}…`"))
    if info.get("converted_from"):
        rows.append(("Converted from", f"`{info['converted_from']['file']}` (a pickle)"))
    return "## Model details\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in rows) + "\n"


def _params(params: dict) -> str:
    shown = {k: v for k, v in params.items() if v is not None and not isinstance(v, (dict, list))}
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()) or "defaults"


def _data(info: dict, sidecar: Sidecar, predictions: dict) -> str:
    classes = list(info["classes"])
    c = info["features"]["config"]
    lines = ["## Training data\n", f"- **Dataset**: `{sidecar.dataset}` (found at `{sidecar.data_root}` when trained)"]
    lines.append(f"- **Patients**: {_patients(c.get('patients'))}")
    if info.get("excluded"):
        gone = info["excluded"]
        lines.append(f"- **Excluded**: {gone['images']} train images named by `{gone['file']}` (list fingerprint "
                     f"`{gone['sha256']}`) were not trained on; the splits below are what it learned from and was "
                     "scored on")
    lines += ["", "| split | images | " + " | ".join(classes) + " | images fingerprint |",
              "|---|---:|" + "---:|" * len(classes) + "---|"]
    for split, p in predictions.items():
        counts = np.bincount(np.asarray(p["y"]), minlength=len(classes))
        fingerprint = (info.get("splits") or {}).get(split, {}).get("images_sha256", "")
        lines.append(f"| {split} | {len(p['y'])} | " + " | ".join(str(int(n)) for n in counts) +
                     f" | `{fingerprint[:16]}` |")
    return "\n".join(lines) + "\n"


def _patients(facts: dict | None) -> str:
    """What is true of the model's patient groups, as recorded when its features or run were made."""
    if not facts:
        return "how images were grouped into patients was not recorded (made by an older featx)"
    words = [f"grouped by {facts['source']}: {facts['groups']} patients"]
    if facts["named"] < facts["images"]:
        words.append(f"{facts['images'] - facts['named']} of {facts['images']} images matched no patient and are "
                     "each their own")
    words.append({"cut": "the validation split was cut from train by featx, whole patients on one side",
                  "given": "the validation split came from the user (folders or manifest)",
                  "none": "no validation split"}.get(facts["validation"], "validation split of unknown origin"))
    if facts["across_splits"]:
        words.append(f"**{facts['across_splits']} patients have images in two splits** (e.g. {facts['example']}), so "
                     "their evaluation is not independent of training")
    else:
        words.append("no patient has images in two splits")
    return "; ".join(words)


def _evaluation(scores: dict, chosen: dict | None = None) -> str:
    if chosen:
        known = f" (the dataset's {chosen['dataset_split']} split)" if chosen.get("dataset_split") else ""
        after = (f"Then featx study (`{chosen['study']}`) chose this model as its leader among {chosen['methods']} "
                 f"methods by their ROC-AUC on the {chosen['split']} split{known}: that choice favoured it, so its "
                 f"{chosen['split']} figures read optimistic too; measure it on images no choice saw.")
    else:
        after = "The test split, when there is one, was never used for any choice."
    lines = ["## Evaluation\n", "Bootstrap 95% intervals (1,000 resamples, stratified by class). Train is shown "
             "for reference only, and the validation split (or cross-validation inside train) chose the "
             f"hyperparameters, epoch or threshold, so both read optimistic. {after}\n",
             "| split | images | " + " | ".join(label for _, label in SHOWN) + " |", "|---|---:|" + "---|" * len(SHOWN)]
    for split, s in scores.items():
        cells = []
        for key, _ in SHOWN:
            value, ci = s["point"].get(key), s["ci"].get(key)
            cells.append("–" if value is None else f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        lines.append(f"| {split} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _threshold(info: dict) -> str:
    rule = DecisionRule.of(info)
    if not rule.thresholded:
        return f"## Decision\n\n{rule.describe().capitalize()}.\n"
    return f"## Decision threshold\n\n{rule.describe(where=True)}.\n"


def _target(target: dict, scored: bool) -> str:
    """The site the model was fitted for: its images, the shift to it, the adaptation, and what was checked."""
    shift = target.get("shift")
    lines = [f"## Target site: {target['site']}\n",
             f"- **Images**: {target['images']} ({target['labelled']} labelled), fingerprint "
             f"`{target['images_sha256'][:16]}`; none was trained on, and none chose a hyperparameter or the threshold",
             f"- **Shift** from train: domain AUC {shift['auc']:.3f} [{shift['ci'][0]:.3f}, {shift['ci'][1]:.3f}] on this "
             "model's features (0.5: no shift visible; 1: every image betrays its site)" if shift else
             "- **Shift** from train: not measured (featx measures it on frozen features: fit or study --target)"]
    adaptation = target.get("adaptation")
    if adaptation:
        prior = adaptation.get("estimated_prior")
        how = ("Its weights and threshold are the fine-tune's own; only the BatchNorm statistics changed, so its "
               "figures on the training site's splits are not repeated here" if adaptation["method"] == "adabn" else
               "The train and validation rows above are this adapted model on the training site's images as they "
               "are; its threshold was chosen on validation predictions of the adapted head")
        lines.append(f"- **Adapted** by {adaptation['words']}, learnt from {adaptation['unlabelled_target_images']} "
                     "target images without their labels" +
                     ("; estimated class prior there: " + ", ".join(f"{c} {p:.2f}" for c, p in prior.items())
                      if prior else "") + f". {how}")
    lines.append("- **At the target**: the `target` row of the evaluation table, on its labelled images" if scored else
                 "- **At the target**: not measured, as no target image has a label" +
                 ("; whether the adaptation helps there cannot be checked without some (featx calibrate)"
                  if adaptation else ""))
    return "\n".join(lines) + "\n"


def _limits(local: LocalCalibration | None) -> str:
    if local is None:
        return DEFAULT_LIMITS
    return (f"Tested on held-out images of its training dataset and on {local.images} labelled images of "
            f"{local.site} (above); other sites, scanners, populations, ages or protocols may give different "
            "results. Check the model on your own data before relying on it.")


def _local(local: LocalCalibration) -> str:
    """What featx calibrate learnt and measured at the site: the estimate from k images, scaling, sets."""
    lines = [f"## At {local.site} (featx calibrate)\n",
             f"This version of `{local.calibrated_from['file']}` was calibrated on {local.where}, images fingerprint "
             f"`{local.images_sha256[:16]}`. Its model file is unchanged. Estimates from those images, with 95% "
             "intervals (ROC-AUC: stratified bootstrap; proportions: Wilson):\n"]
    lines += [f"- {line[:1].upper() + line[1:]}" for line in local.estimate_lines()]
    if local.scaling:
        lines.append(f"- Probabilities are rescaled for {local.site} by {local.scaling.describe()}, learnt on the "
                     "same images; the evaluation table above shows the training data's splits rescaled the same way")
    if local.sets:
        lines.append(f"- `featx predict` and the demo give {local.sets.describe()}. If later images of {local.site} "
                     "are exchangeable with the calibration images, each class's true label is in its set at least "
                     f"{local.sets.confidence:.0%} of the time; a set of two classes means not sure")
    lines.append(f"- These figures hold for images like these {local.images}; another site, scanner or patient "
                 "population needs its own labelled images")
    return "\n".join(lines) + "\n"


def _robustness(rows: list[dict]) -> str:
    """ROC-AUC per corruption (rows) and severity (columns), per evaluated split."""
    out = ["## Robustness (featx robustness)\n"]
    for split in dict.fromkeys(r.get("split", "test") for r in rows):
        mine = [r for r in rows if r.get("split", "test") == split]
        severities = sorted({r["severity"] for r in mine if r["severity"] > 0})
        clean = next((r for r in mine if r["severity"] == 0), None)
        out.append(f"ROC-AUC on corrupted copies of the {split} split" +
                   (f" (clean: {clean['roc_auc']:.3f})" if clean and clean.get("roc_auc") is not None else "") + ":\n")
        out += ["| corruption | " + " | ".join(f"severity {s}" for s in severities) + " |",
                "|---|" + "---:|" * len(severities)]
        for corruption in dict.fromkeys(r["corruption"] for r in mine if r["severity"] > 0):
            cells = {r["severity"]: r.get("roc_auc") for r in mine if r["corruption"] == corruption}
            out.append(f"| {corruption} | " + " | ".join("–" if cells.get(s) is None else f"{cells[s]:.3f}"
                                                       for s in severities) + " |")
        out.append("")
    return "\n".join(out)
