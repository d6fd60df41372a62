import os
import pytest
import torch
from torch import nn

from featx import FeatxError, create_backbone, get_spec
from featx.models.backbones import PooledLayer
from featx.models.registry import REGISTRY
from featx.models.weights import rename_by_position

from conftest import TINY


def test_registry_has_the_promised_backbones():
    assert {"xception", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_lite0",
            "convnext_tiny", "vit_b_16"} <= set(REGISTRY)


def test_data_config_comes_from_the_checkpoint_not_a_default():
    xception = create_backbone("xception", "random")
    assert xception.data_config["input_size"] == [3, 299, 299]
    assert xception.data_config["mean"] == [0.5, 0.5, 0.5] and xception.data_config["std"] == [0.5, 0.5, 0.5]
    assert xception.data_config["crop_pct"] == pytest.approx(0.8975)
    assert xception.num_features == 2048
    tiny = create_backbone(TINY, "random")
    assert tiny.data_config["input_size"] == [3, 160, 160]
    assert tiny.data_config["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_xception_uses_keras_numerics():
    model = create_backbone("xception", "random").model
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(type(m) is nn.MaxPool2d for m in model.modules())
    stock = create_backbone("timm:legacy_xception", "random").model
    assert any(type(m) is nn.MaxPool2d for m in stock.modules())


def test_random_weights_are_the_same_in_every_call():
    assert create_backbone(TINY, "random").weights_sha256 == create_backbone(TINY, "random").weights_sha256


def test_backbone_is_frozen_and_in_eval_mode():
    bb = create_backbone(TINY, "random")
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_local_weights_file_drops_the_classifier(tmp_path):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("test_efficientnet", num_classes=10)  # with a classifier
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    bb = create_backbone(TINY, str(path))
    assert torch.equal(bb.model.state_dict()["conv_stem.weight"], full.state_dict()["conv_stem.weight"])
    assert bb.weights_sha256 != create_backbone(TINY, "random").weights_sha256


def test_mismatched_weights_file_names_the_keys(tmp_path):
    import timm

    other = timm.create_model("test_convnext", num_classes=0)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(FeatxError, match=r"do not fit this backbone: keys \d+ missing \(.+\); \d+ unexpected"):
        create_backbone(TINY, str(path))


def test_weights_dir_finds_files_named_after_the_backbone(tmp_path, monkeypatch):
    import timm

    torch.manual_seed(2)
    src = timm.create_model("test_efficientnet", num_classes=0)
    torch.save(src.state_dict(), tmp_path / "test_efficientnet.some_tag.pth")
    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(tmp_path))
    bb = create_backbone(TINY)  # weights="imagenet" resolves to the folder
    assert bb.weights_source.endswith("test_efficientnet.some_tag.pth")
    assert torch.equal(bb.model.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])


def test_missing_weights_offline_says_what_to_do():
    import huggingface_hub.constants

    # conftest: HF_HUB_OFFLINE=1, no weights folder, and an empty hub cache of the tests' own
    assert huggingface_hub.constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])
    assert "featx-tests-hf-" in os.environ["HF_HOME"]
    with pytest.raises(FeatxError) as info:
        create_backbone("resnet50")
    message = str(info.value)
    assert "FEATX_WEIGHTS_DIR" in message and "--weights PATH" in message and "resnet50.a1_in1k" in message
    assert "\n" not in message


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(FeatxError, match="did you mean xception"):
        get_spec("xceptoin")
    with pytest.raises(FeatxError, match="closest: timm:resnet50"):
        get_spec("timm:resnet5O")


def test_positional_renaming_checks_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    renamed = rename_by_position({"_x": torch.ones(2, 3), "_y": torch.ones(4)}, target, "pkg")
    assert list(renamed) == ["a.weight", "b.weight"]
    with pytest.raises(FeatxError, match="does not fit"):
        rename_by_position({"_x": torch.ones(3, 2), "_y": torch.ones(4)}, target, "pkg")


def test_inner_layer_is_pooled_and_unknown_layers_are_named():
    bb = create_backbone(TINY, "random", layer="blocks.1")
    assert isinstance(bb.model, PooledLayer)
    out = bb.model(torch.zeros(2, 3, 160, 160))
    assert out.shape == (2, bb.num_features) and bb.num_features != create_backbone(TINY, "random").num_features
    with pytest.raises(FeatxError, match="no layer named 'blocks.99'"):
        create_backbone(TINY, "random", layer="blocks.99")
