"""What the CLI prints as tables, formatted once: fit and fine-tune results with their intervals, the
registered backbones, and how a feature cache was made."""

from __future__ import annotations


def chosen(params: dict, threshold, how: str, seconds: float) -> str:
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    if threshold is not None:
        text += f"; threshold {threshold:.3f}"
    return text + f" ({how}, {seconds:.1f} s)"


def results_table(rows) -> str:
    """(method, metrics per split, what was chosen) rows as one table: the main metrics, each with its 95%
    bootstrap interval (featx.evaluation.metrics.evaluatewith_intervals)."""
    columns = (("balanced_accuracy", "balanced acc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
               ("roc_auc", "ROC-AUC"))
    lines = [f"{'method':<8}{'split':<7}{'images':>6}" + "".join(f"{label:>21}" for _, label in columns)]
    chosen_lines = []
    for method, metrics, chosen in rows:
        for i, (split, m) in enumerate(metrics.items()):
            cells = "".join(f"{with_interval(m.get(c), (m.get('ci') or {}).get(c)):>21}" for c, _ in columns)
            lines.append(f"{method if i == 0 else '':<8}{split:<7}{m['n']:>6}{cells}")
        chosen_lines.append(f"{method}: {chosen}")
    return "\n".join(lines + ["95% intervals: stratified bootstrap of the split's images"] + chosen_lines)


def with_interval(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f} [no interval]"


def count_lines(store) -> list[str]:
    """Each split's images in a cache: done, and skipped or pending where there are any."""
    lines = []
    for split, n in store.counts().items():
        extra = "".join(f", {n[k]} {k}" for k in ("skipped", "pending") if n[k])
        lines.append(f"  {split:<5}  {n['done']} images{extra}")
    return lines


def cache_lines(store) -> list[str]:
    """How a feature cache was made (featx info): backbone, weights, input, run, data, groups, counts."""
    c, dc = store.config, store.config["data_config"]
    pooled = f"pool {c['pool']} over {c['layers']}" if c.get("pool") else f"layer {c['layer']}"
    lines = [f"{store.path}",
             f"  backbone  {c['backbone']} ({c['timm_model']}), {pooled}, {store.num_features} features, {c['dtype']}",
             f"  weights   {c['weights_source']} (sha256 {c['weights_sha256'][:16]}...)",
             f"  input     {dc['input_size'][1]}x{dc['input_size'][2]} {dc['interpolation']}, crop_pct "
             f"{dc['crop_pct']}, mean {dc['mean']}, std {dc['std']}",
             f"  made      on {c.get('device', '?')}, {c.get('precision', '?')}, decode {c.get('decode', '?')}, "
             f"tta {c.get('tta', 'none')}" + (f", engine {'+'.join(c['engines'])}" if c.get("engines") else ""),
             f"  data      {c['data_root']}  classes: {', '.join(store.classes)}"]
    if c.get("group_source"):
        lines.append(f"  groups    from {c['group_source']} (no raw patient ID is stored)")
    return lines + count_lines(store)


def backbone_lines() -> list[str]:
    """The registered backbones (featx backbones): input size, pooling, feature width, offline weights."""
    from ..models.backbones import describe
    from ..models.registry import REGISTRY

    rows = [describe(spec) for spec in REGISTRY.values()]
    header = ("name", "timm checkpoint", "input", "pool", "features", "weights offline")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    for note in dict.fromkeys(spec.note for spec in REGISTRY.values() if spec.note):
        names = ", ".join(spec.name for spec in REGISTRY.values() if spec.note == note)
        lines.append(f"\n{names}: {note}")
    return lines + ["\nToken models (ViTs) also pool --pool avg or cls+avg, over --layers last:K blocks; CNNs pool "
                    "avg. Any timm model works as timm:<name>. Offline weights: set FEATX_WEIGHTS_DIR to a folder of "
                    "<timm name>.<tag>.pth files, or pass --weights PATH (a state_dict or a Hugging Face model "
                    "folder)."]
