"""Option values, checked once at each public entry point (scikit-learn's `_parameter_constraints` is the model).

The CLI's choices are built from the same vocabularies and fail through the same checks, so a
bad value gets the same one line from `featx extract --tta hflp` as from `featx.extract(tta="hflp")`
or `FeatureExtractor(tta="hflp")`. Nothing here imports torch.
"""

from __future__ import annotations

import re

from .errors import FeatxError

CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("float32", "float16"),
    "tta": ("none", "hflip"),
    "decode": ("pil", "pil-draft", "device"),
    "engine": ("auto", "eager", "compile", "openvino", "onnxruntime"),  # models.numerics
    "precision": ("auto", "fp32", "bf16"),
    "augment": ("xray", "natural", "randaugment", "trivialaugment", "corrupt", "none"),
    "select": ("loss", "auc"),
    "schedule": ("cosine", "onecycle"),
    "class_weight": ("balanced", "none"),
    "solver": ("lbfgs", "sgd"),
    "split": ("train", "val", "test"),
    "pool": ("cls", "avg", "cls+avg"),
}
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
_CUDA_INDEX = re.compile(r"cuda:\d+")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choice(name: str, value):
    """`value` if it is one of CHOICES[name]; otherwise one line naming the option and its values."""
    if value not in CHOICES[name]:
        raise FeatxError(f"{flag(name)} must be one of {', '.join(CHOICES[name])}, not {value!r}")
    return value


def check_device(device) -> str:
    """The spelling of a device (auto, cpu, cuda, cuda:N, mps); whether it exists is runtime's question."""
    if not isinstance(device, str) or not (device in DEVICES or _CUDA_INDEX.fullmatch(device)):
        raise FeatxError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {device!r}")
    return device


def check_batch_size(batch_size, *, auto: bool = True):
    """None, a positive whole number (digits in a string too: click passes them so), or "auto" where allowed."""
    if batch_size is None or (auto and batch_size == "auto"):
        return batch_size
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        value = 0
    if isinstance(batch_size, bool) or value < 1 or str(value) != str(batch_size).strip():
        allowed = "a whole number of at least 1" + (", or auto" if auto else "")
        raise FeatxError(f"--batch-size must be {allowed}; got {batch_size!r}")
    return value


def check_layers(layers) -> int | None:
    """`last:K` -> K, the number of final blocks whose pooled tokens are concatenated (None stays None)."""
    if layers is None:
        return None
    head, _, count = str(layers).partition(":")
    if head != "last" or not count.isdigit() or int(count) < 1:
        raise FeatxError(f"--layers must be last:K with K >= 1 (the last K blocks), not {layers!r}")
    return int(count)


def check_image_size(image_size):
    """None, or a whole number of pixels of at least 32."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32):
        raise FeatxError(f"--image-size must be a whole number of at least 32, got {image_size!r}")
    return image_size


def feature_variant(image_size=None, pool=None, layers=None) -> dict:
    """The options that pick a backbone's feature variant, checked, as extract, fit and shift pass them on
    (None: the backbone's own)."""
    check_image_size(image_size)
    if pool is not None:
        check_choice("pool", pool)
    check_layers(layers)
    return {"image_size": image_size, "pool": pool, "layers": layers}


def check_number(name: str, value, *, integer: bool = False, low=None, high=None, open_low: bool = False,
                 open_high: bool = False, optional: bool = False):
    """`value` if it is a number (a whole one where `integer`) within its bounds; one line naming the option
    and what it takes otherwise. Booleans and text are not numbers, whatever they spell."""
    if value is None and optional:
        return value
    kind = "a whole number" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'above' if open_low else 'at least'} {low}")
    if high is not None:
        bounds.append(f"{'below' if open_high else 'at most'} {high}")
    wanted = kind + (" " + " and ".join(bounds) if bounds else "")
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not numeric or \
            (low is not None and (value <= low if open_low else value < low)) or \
            (high is not None and (value >= high if open_high else value > high)):
        raise FeatxError(f"{flag(name)} must be {wanted}, not {value!r}")
    return value


def check_options(**values) -> None:
    """Check each named option by its rule: the CHOICES vocabularies, device, batch_size."""
    for name, value in values.items():
        if name == "device":
            check_device(value)
        elif name == "batch_size":
            check_batch_size(value)
        else:
            check_choice(name, value)


def parse_duration(option: str, text: str) -> float:
    """90s, 45m, 2h, 1.5h or 1h30m as seconds; one line naming `option` for anything else."""
    compact = str(text).lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh]?)", compact)
    if not parts or "".join(a + b for a, b in parts) != compact or (len(parts) > 1 and not all(u for _, u in parts)):
        raise FeatxError(f"{option} {text!r} is not a time such as 90m, 2h or 1h30m")
    return sum(float(a) * {"": 1, "s": 1, "m": 60, "h": 3600}[u] for a, u in parts)
