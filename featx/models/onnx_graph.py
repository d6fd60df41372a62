"""A torch network as an ONNX graph: uint8 N×H×W×3 images in, its outputs out, normalisation and any
hflip TTA inside. `featx export` writes it (joined to a head); the openvino and onnxruntime extraction
engines (models.engines) run it.
"""

from __future__ import annotations

import io
import warnings

from .._core.errors import FeatxError, first_line

OPSET = 17
INPUT = "image"


def torch_graph(module, input_size, output: str):
    """`module` (uint8 N×H×W×3 -> float outputs) as an ONNX model (onnx's ModelProto) with a dynamic batch axis."""
    import onnx

    return onnx.load_from_string(graph_bytes(module, input_size, output))


def graph_bytes(module, input_size, output: str) -> bytes:
    """`module` (uint8 N×H×W×3 -> float outputs) as a serialised ONNX model with a dynamic batch axis."""
    import torch

    _, height, width = input_size
    module = fixed_size(module, (height, width))
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
            torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, input_names=[INPUT],
                              output_names=[output], dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
                              opset_version=OPSET)
    except Exception as exc:  # an operator the exporter cannot write at this opset
        raise FeatxError(f"torch cannot export this network to ONNX opset {OPSET}: {type(exc).__name__}: "
                         f"{first_line(exc)[:200]}") from None
    return buffer.getvalue()


def fixed_size(module, size: tuple[int, int]):
    """`module`, or a copy whose ViTs run at `size` from a position table resampled once, here, as they
    resample it for every batch at featx's runtime (timm's dynamic_img_size: bicubic, antialiased). The graph
    has one input size, so the table is a constant of it, and ONNX needs no antialiased resize (an operator
    opset 17 lacks). CNNs are returned as they are."""
    import copy

    import torch
    from timm.layers import resample_abs_pos_embed

    if not _resampling_vits(module):
        return module
    module = copy.deepcopy(module)
    for vit in _resampling_vits(module):
        embed = vit.patch_embed
        grid = tuple(embed.dynamic_feat_size(size)) if hasattr(embed, "dynamic_feat_size") else \
            (size[0] // embed.patch_size[0], size[1] // embed.patch_size[1])
        with torch.no_grad():
            table = resample_abs_pos_embed(vit.pos_embed, new_size=list(grid), old_size=list(embed.grid_size),
                                           num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens)
        vit.pos_embed = torch.nn.Parameter(table, requires_grad=False)
        vit.dynamic_img_size = False
        embed.img_size, embed.grid_size, embed.num_patches = tuple(size), grid, grid[0] * grid[1]
        embed.flatten = True  # tokens as N x L x C, the layout a fixed-size ViT adds its table to
    return module


def _resampling_vits(module) -> list:
    """The ViTs in `module` that resample their position table for each input (timm's dynamic_img_size)."""
    return [m for m in module.modules() if getattr(m, "dynamic_img_size", False) and
            getattr(m, "pos_embed", None) is not None and hasattr(m, "patch_embed")]


def image_module(model, data_config: dict, tta: str = "none", softmax: bool = False):
    """The torch module ONNX sees: uint8 N×H×W×3 -> normalised N×3×H×W -> `model`, the mean of both
    views under hflip TTA (as extract computes features), then softmax when `softmax` (a fine-tune's logits)."""
    import torch

    from ..data.transforms import Normalize
    from .views import probabilities, views_mean

    class ImageInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.normalize = model, Normalize(data_config)

        def forward(self, image):
            x = self.normalize(image.permute(0, 3, 1, 2))
            out = views_mean(self.model, x, tta)
            return probabilities(out) if softmax else out

    return ImageInput().eval()
