"""Foundation backbones: token pooling, layer concatenation, input size, Hugging Face DINOv2 folders.

Tiny random timm ViTs stand in for DINOv2 (test_vit: 6 blocks of 64 dims, 160 px, class token,
timm's token pooling; test_vit2: average pooling with fc_norm). Real DINOv2 weights only in the
last test, skipped without ../shared.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featx
from featx import FeatxError, create_backbone
from featx.cli import main
from featx.data.transforms import EvalTransform
from featx.features.identity import identity_hash
from featx.finetuning.freezing import backbone_groups, parameter_groups
from featx.models.tokens import TokenFeatures

from conftest import TINY, one_line_error

VIT = "timm:test_vit"
ARGS = ["--weights", "random", "--workers", "0", "--no-progress", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _probe(size=160, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_pools_are_the_tokens_they_name():
    plain = create_backbone(VIT, "random")
    assert not isinstance(plain.model, TokenFeatures) and plain.num_features == 64 and plain.pool == "cls"
    x = _probe()
    with torch.inference_mode():
        tokens = plain.model.forward_features(x)  # N x (1 + 100) x 64, after the final norm
        own = plain.model(x)
        by_pool = {pool: create_backbone(VIT, "random", pool=pool).model(x) for pool in ("avg", "cls+avg")}
    assert torch.equal(own, tokens[:, 0])  # timm's default for this model: the class token
    assert torch.allclose(by_pool["avg"], tokens[:, 1:].mean(1), atol=1e-6)  # the class token left out
    assert torch.allclose(by_pool["cls+avg"], torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), atol=1e-6)


def test_last_k_blocks_concatenate_each_block_through_the_final_norm():
    four = create_backbone(VIT, "random", pool="cls+avg", layers="last:4")
    one = create_backbone(VIT, "random", pool="cls+avg")
    assert four.num_features == 4 * 2 * 64 and one.num_features == 2 * 64
    x = _probe()
    with torch.inference_mode():
        stacked, last = four.model(x), one.model(x)
        vit = four.model.model
        embedded = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        block2, block3 = vit.norm(vit.blocks[:3](embedded)), vit.norm(vit.blocks[:4](embedded))
    assert stacked.shape == (2, 512)
    assert torch.allclose(stacked[:, -128:], last, atol=1e-5)  # the last block's part is the plain pool
    # the first of the last four of six blocks is block 2: its class token, through the final norm, comes first
    assert torch.allclose(stacked[:, :64], block2[:, 0], atol=1e-5)
    assert torch.allclose(stacked[:, 128:192], block3[:, 0], atol=1e-5)
    assert not torch.allclose(stacked[:, :64], block3[:, 0], atol=1e-3)


def test_pool_and_layers_are_part_of_the_identity_only_when_not_the_models_own():
    ids = {(p, l): create_backbone(VIT, "random", pool=p, layers=l).identity()
           for p, l in [(None, None), ("cls", None), ("avg", None), ("cls", "last:1"), ("cls", "last:2")]}
    assert "pool" not in ids[(None, None)] and ids[("cls", None)] == ids[(None, None)]  # the model's own pooling
    assert ids[("avg", None)]["pool"] == "avg" and ids[("cls", "last:2")]["layers"] == "last:2"
    hashes = {identity_hash(i) for k, i in ids.items() if k != ("cls", None)}
    assert len(hashes) == 4  # last:1 of cls is computed another way and kept apart; the rest all differ
    avg_model = create_backbone("timm:test_vit2", "random")  # timm pools this one by averaging (with fc_norm)
    assert avg_model.pool == "avg" and "pool" not in avg_model.identity()


def test_options_that_do_not_apply_are_refused_in_one_line(folder):
    cnn = ["--backbone", TINY, *ARGS]
    assert "--pool cls applies to token models (ViTs); timm:test_efficientnet is a CNN" in one_line_error(
        run("extract", "--data", folder, *cnn, "--pool", "cls"))
    assert "--layers last:2 applies to token models" in one_line_error(
        run("extract", "--data", folder, *cnn, "--layers", "last:2"))
    vit = ["--backbone", VIT, *ARGS]
    assert "test_vit has 6 blocks" in one_line_error(run("extract", "--data", folder, *vit, "--layers", "last:7"))
    assert "--layers must be last:K" in one_line_error(run("extract", "--data", folder, *vit, "--layers", "first:2"))
    assert "--pool must be one of cls, avg, cls+avg" in one_line_error(
        run("extract", "--data", folder, *vit, "--pool", "max"))
    assert "cannot be combined with --pool" in one_line_error(
        run("extract", "--data", folder, *vit, "--pool", "avg", "--layer", "blocks.2"))
    assert "--image-size" in one_line_error(run("extract", "--data", folder, *vit, "--image-size", "8"))
    with pytest.raises(FeatxError, match="--pool must be one of"):
        featx.FeatureExtractor(VIT, weights="random", pool="mean").fit(["x.png"])


def test_image_size_keeps_the_crop_ratio_and_resamples_the_position_table():
    vit = "timm:vit_tiny_patch16_224"  # unlike test_vit, timm builds it for 224 px only
    native = create_backbone(vit, "random")
    small = create_backbone(vit, "random", image_size=112)
    assert small.data_config["input_size"] == [3, 112, 112] and small.data_config["crop_pct"] == 0.9
    assert EvalTransform(small.data_config).resize_side == int(112 / 0.9)  # resize = size / crop_pct
    assert small.identity() != native.identity() and small.weights_sha256 == native.weights_sha256
    with torch.inference_mode():
        out = small.model(_probe(112))
        with pytest.raises(Exception, match="doesn't match model"):  # timm's fixed-size ViT refuses 112 px
            native.model(_probe(112))
        assert torch.equal(small.model(_probe(224)), native.model(_probe(224)))  # same weights, same table at 224
    assert out.shape == (2, 192)
    cnn = create_backbone(TINY, "random", image_size=96)
    assert cnn.data_config["input_size"] == [3, 96, 96] and cnn.num_features == create_backbone(TINY, "random").num_features


def test_extract_fit_predict_and_compare_with_a_pool(folder, tmp_path):
    base = ["--data", folder, "--backbone", VIT, "--cache", tmp_path / "c"]
    made = run("extract", *base, *ARGS, "--pool", "cls+avg", "--image-size", "112", "--val-fraction", "0.34")
    assert made.exit_code == 0, made.output
    cache = Path(made.stdout.strip().splitlines()[-1])
    store = featx.FeatureStore(cache)
    assert store.num_features == 128 and store.config["pool"] == "cls+avg"
    assert store.config["backbone_options"] == {"image_size": 112, "pool": "cls+avg", "layers": None}
    assert "pool cls+avg over last:1, 128 features" in run("info", cache).output
    again = run("extract", *base, *ARGS, "--pool", "cls+avg", "--image-size", "112")
    assert "already cached" in again.output
    fitted = run("fit", *base, "--weights", "random", "--pool", "cls+avg", "--image-size", "112", "--head", "logreg")
    assert fitted.exit_code == 0, fitted.output
    assert "extracting them first" not in fitted.output  # found the cls+avg cache at 112 px
    artifact = Path(fitted.stdout.strip().splitlines()[-1])
    saved = np.load(artifact.with_suffix(".predictions.npz"), allow_pickle=False)
    rows = featx.predict(artifact, [folder / p for p in saved["val__path"]], device="cpu")  # cls+avg at 112 px
    assert np.allclose([r["p_PNEUMONIA"] for r in rows], saved["val__proba"][:, 1], atol=1e-5)
    with pytest.raises(FeatxError, match="on a vision transformer's tokens has no exact class activation map"):
        featx.explain(artifact, folder / saved["val__path"][0])
    compared = run("compare", "--data", folder, "--split", "val", "--cache", tmp_path / "c", "--no-report")
    assert "timm:test_vit [cls+avg, 112 px] + logreg" in compared.output, compared.output
    plain = run("fit", *base, "--weights", "random", "--head", "logreg")  # the model's own pooling: another cache
    assert "extracting them first" in plain.output


def test_feature_extractor_pools_like_extract(folder, tmp_path):
    made = featx.extract(folder, VIT, weights="random", cache_dir=tmp_path / "c", device="cpu", workers=0,
                         pool="avg", layers="last:2", progress=False)
    paths = [str(Path(made.config["data_root"]) / p) for p in made.row_table().path[:3]]
    cached = featx.FeatureExtractor(VIT, weights="random", pool="avg", layers="last:2", cache=tmp_path / "c",
                                    device="cpu")
    fresh = featx.FeatureExtractor(VIT, weights="random", pool="avg", layers="last:2", cache=None, device="cpu")
    from_cache, computed = cached.transform(paths), fresh.transform(paths)
    assert cached.n_cached_ == 3 and from_cache.shape == (3, 128)
    assert np.allclose(from_cache, computed, atol=1e-5)


def test_vit_blocks_for_unfreeze_and_layer_decay():
    bb = create_backbone(VIT, "random", frozen=False)
    groups = parameter_groups(bb.model)
    assert len(groups) == 1 + 6  # the stem, then six blocks; the final norm trains with the last block
    assert {"norm.weight", "norm.bias"} <= set(groups[-1]) and all(n.startswith("blocks.5.") or n.startswith("norm.")
                                                                    for n in groups[-1])
    decayed = backbone_groups(bb.model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {}
    names = {id(p): n for n, p in bb.model.named_parameters()}
    for g in decayed:
        for p in g["params"]:
            lr_of[names[id(p)]] = g["lr"]
    assert len(lr_of) == len(names)
    assert lr_of["blocks.5.attn.qkv.weight"] == pytest.approx(1e-3)
    assert lr_of["blocks.4.attn.qkv.weight"] == pytest.approx(5e-4)
    assert lr_of["blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** 5)
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5 ** 6)
    plain = backbone_groups(bb.model, lr=1e-3, weight_decay=0.05, layer_decay=None)
    assert len(plain) == 1 and plain[0]["lr"] == 1e-3


def test_finetune_a_vit_with_layer_decay_at_another_size(split_folder, tmp_path):
    result = featx.finetune(split_folder, VIT, weights="random", epochs=1, unfreeze="last:2", layer_decay=0.75,
                            image_size=64, batch_size=4, device="cpu", workers=0, cache_dir=tmp_path / "c",
                            augment="corrupt", progress=False)
    before = create_backbone(VIT, "random").model.state_dict()
    net = featx.load(result.artifact).network()
    after = net.backbone.state_dict()
    assert torch.equal(after["blocks.3.attn.qkv.weight"], before["blocks.3.attn.qkv.weight"])  # frozen
    assert not torch.equal(after["blocks.5.attn.qkv.weight"], before["blocks.5.attn.qkv.weight"])  # trained
    saved = np.load(result.artifact.with_suffix(".predictions.npz"), allow_pickle=False)
    rows = featx.predict(result.artifact, [split_folder / p for p in saved["test__path"]], device="cpu")  # at 64 px
    assert np.allclose([r["p_PNEUMONIA"] for r in rows], saved["test__proba"][:, 1], atol=1e-5)
    image = split_folder / saved["test__path"][0]
    heat = featx.explain(result.artifact, image)  # Grad-CAM on the patch tokens entering the last block
    assert heat["method"] == "Grad-CAM on blocks.5.norm1" and heat["low_res"].shape == (4, 4)  # 64 px / 16
    assert heat["heatmap"].shape == Image.open(image).size[::-1] and heat["heatmap"].max() == 1.0


def test_report_heatmaps_pass_over_a_head_on_vit_tokens_to_the_fine_tune(split_folder, tmp_path):
    cache = tmp_path / "c"
    featx.finetune(split_folder, VIT, weights="random", epochs=1, image_size=64, batch_size=4, device="cpu",
                   workers=0, cache_dir=cache, progress=False)
    featx.fit(data=split_folder, backbone=VIT, weights="random", head="logreg", cache_dir=cache, image_size=64)
    said = []
    result = featx.report(split_folder, split="test", out=tmp_path / "r", cache_dir=cache, n_boot=100, heatmaps=2,
                          log=said.append)
    ranked = [r["method"] for r in result["records"] if r["ranked"]]
    assert ranked[0] == "timm:test_vit [64 px] + logreg"  # the best method has no map: the fine-tune's is drawn
    assert "heatmaps.png" in {p.name for p in result["figures"]}
    assert "Where the evidence lies: Grad-CAM on blocks.5.norm1, timm:test_vit fine-tune [64 px]" in \
        Path(result["html"]).read_text()
    assert not any("no heatmaps" in line for line in said)


# --- Hugging Face transformers DINOv2 folders ---------------------------------------------------

def _tiny_dinov2(folder: Path, **preprocessing):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, patch_size=14, image_size=28)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():  # move every tensor off its initial value, so a swapped or missed one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    if preprocessing:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessing))
    return model


def test_transformers_dinov2_folder_equals_the_original(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from featx.models.weight_files import folder_preprocessing
    from featx.models.weights import read_state_dict

    original = _tiny_dinov2(tmp_path / "dinov2", image_mean=[0.53, 0.53, 0.53], image_std=[0.26, 0.26, 0.26])
    state = read_state_dict(tmp_path / "dinov2")  # the folder: model.safetensors inside, keys converted
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1.0,
                            num_classes=0).eval()
    vit.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = original(pixel_values=x).last_hidden_state
        got = vit.forward_features(x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert folder_preprocessing(tmp_path / "dinov2") == {"mean": [0.53] * 3, "std": [0.26] * 3}


def test_a_wrong_folder_or_foreign_keys_are_named(tmp_path):
    from featx.models.converted import dinov2_from_transformers

    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatxError, match="without model.safetensors or pytorch_model.bin"):
        create_backbone(VIT, str(tmp_path / "empty"))
    with pytest.raises(FeatxError, match="unexpected key encoder.layer.0.attention.rope.weight"):
        dinov2_from_transformers({"embeddings.cls_token": torch.zeros(1, 1, 4),
                                  "encoder.layer.0.attention.rope.weight": torch.zeros(4)}, "f")
    _tiny_dinov2(tmp_path / "dinov2")
    with pytest.raises(FeatxError, match="do not fit this backbone"):  # a 32-dim DINOv2 is not test_vit
        create_backbone(VIT, str(tmp_path / "dinov2"))


def test_backbones_lists_the_foundation_models_with_size_and_pool():
    result = run("backbones")
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("dinov2_vits14"))
    assert "vit_small_patch14_dinov2.lvd142m" in line and "224x224" in line and " cls " in line and "384" in line
    assert any(l.startswith("clip_vitb16") and "768" in l for l in result.output.splitlines())
    assert "carry 518 px in their config; featx runs them at 224 px" in result.output


def test_missing_dinov2_weights_name_the_file_and_three_ways():
    with pytest.raises(FeatxError) as info:
        create_backbone("dinov2_vits14")
    message = str(info.value)
    assert "vit_small_patch14_dinov2.lvd142m.pth" in message and "--weights PATH" in message
    assert "Hugging Face model folder" in message and "go online" in message


def test_a_weights_file_of_one_tag_is_not_taken_for_another(tmp_path, monkeypatch):
    from featx import get_spec
    from featx.models.weight_files import find_in_weights_dir

    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "vit_base_patch16_224.augreg2_in21k_ft_in1k.pth").write_bytes(b"x")
    (tmp_path / "legacy_xception.keras_in1k_notop.pth").write_bytes(b"x")
    assert find_in_weights_dir(get_spec("vit_b_16")).name == "vit_base_patch16_224.augreg2_in21k_ft_in1k.pth"
    assert find_in_weights_dir(get_spec("dino_vitb16")) is None  # same architecture, other weights
    assert find_in_weights_dir(get_spec("xception")).name == "legacy_xception.keras_in1k_notop.pth"  # any tag


SHARED = Path(__file__).resolve().parents[2] / "shared"
DINOV2 = SHARED / "weights" / "vit_small_patch14_dinov2.lvd142m.pth"


@pytest.mark.skipif(not DINOV2.is_file(), reason="no ../shared DINOv2 weights (../shared/tools/dinov2_small_weights.sh)")
def test_dinov2_features_equal_timms_own_pipeline(monkeypatch):
    import timm
    from PIL import Image
    from torchvision import transforms as T

    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(DINOV2.parent))
    paths = sorted((SHARED / "data" / "chest_xray" / "train").glob("*/*.jpeg"))[::700][:8]
    assert len(paths) == 8
    feats = featx.FeatureExtractor("dinov2_vits14", cache=None, device="cpu").transform(paths)
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    reference.load_state_dict(torch.load(DINOV2, weights_only=True))
    transform = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.inference_mode():
        cls = reference.eval().forward_features(torch.stack([transform(Image.open(p).convert("RGB"))
                                                             for p in paths]))[:, 0]
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(feats), cls)
    assert cosine.min() >= 0.999, cosine
