"""`--init-head-from`: start the linear layer from a linear probe (Kumar et al. 2022: probe, then fine-tune)."""

from __future__ import annotations

import numpy as np
import torch

from .._core.errors import FeatxError
from ..artifacts.format import read_head
from ..artifacts.linear import linear_weights
from ..artifacts.sidecar import Sidecar
from ..models.backbones import Backbone
from ..models.network import FinetuneNetwork


def load_probe_into_head(net: FinetuneNetwork, bb: Backbone, artifact, classes: list[str]) -> None:
    """Copy a `featx fit` logreg head on this backbone's pooled features (scaler and PCA folded in)
    into the network's linear layer, read through the artifact format and checked against its sidecar."""
    info, pipeline = read_head(artifact)
    sidecar = Sidecar.from_json(info)
    if sidecar.method.head != "logreg":
        raise FeatxError(f"--init-head-from needs a logreg artifact from featx fit, not {artifact}")
    recipe = sidecar.recipe
    made = (recipe.backbone, recipe.weights_sha256, recipe.layer, recipe.pool)
    if made != (bb.spec.name, bb.weights_sha256, "pooled", None):  # pool: the model's own, as fine-tuning pools
        raise FeatxError(f"--init-head-from {artifact} was trained on other features ({recipe.backbone}, "
                         f"weights {recipe.weights_sha256[:12]}); fit a logreg head on this backbone's features")
    if list(info["classes"]) != list(classes):
        raise FeatxError(f"--init-head-from {artifact} has classes {list(info['classes'])}, the data has {classes}")
    coef, intercept = linear_weights(pipeline)
    if coef.shape[0] == 1:  # binary: logits [0, z] give the same softmax as sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(coef).float())
        net.head.bias.copy_(torch.from_numpy(intercept).float())
