"""Fine-tuning at its best: weight averaging, selection by AUC, continuing from a featx fine-tune, stochastic
depth, mixup, TTA, and the run's hash over every option (tiny random-init backbone, generated images)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featx
from featx.artifacts.format import load_predictions
from featx.cli import main
from featx.finetuning.averaging import WeightAverage
from featx.finetuning.config import FinetuneConfig
from featx.finetuning.mixing import Mixing
from featx.finetuning.training import WeightedLoss

from conftest import TINY, make_folder, one_line_error

QUICK = dict(weights="random", batch_size=4, workers=0, progress=False, image_size=64, val_fraction=0.25)
ARGS = ["--backbone", TINY, "--workers", "0", "--no-progress", "--image-size", "64", "--batch-size", "4",
        "--val-fraction", "0.25", "--epochs", "1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "data", per_class=8)


def tune(data, tmp_path, name: str, **kw):
    return featx.finetune(data, TINY, **{**QUICK, "cache_dir": tmp_path / "cache", "out_dir": tmp_path / name, **kw})


def test_ema_weights_equal_a_hand_computed_average():
    """timm's ModelEmaV3 with warm-up: the first update copies, update t keeps min(decay, 1 - t^(-2/3))."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.6)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    expected = None
    for t in range(1, 6):
        loss = net(torch.randn(8, 3)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        average.update(net)
        now = {k: v.detach().clone() for k, v in net.state_dict().items()}
        keep = 0.0 if t == 1 else min(0.6, 1 - t ** (-2 / 3))
        expected = now if expected is None else {  # integer buffers (BatchNorm's count) are copied
            k: keep * expected[k] + (1 - keep) * now[k] if now[k].is_floating_point() else now[k] for k in now}
    assert [round(average.decay(t), 6) for t in (1, 2, 5)] == [0.0, round(1 - 2 ** (-2 / 3), 6), 0.6]
    got = average.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert not torch.allclose(got["0.weight"], net.state_dict()["0.weight"])  # an average, not a copy


def test_ema_is_scored_beside_the_raw_weights_and_is_the_artifact(data, tmp_path):
    """history.csv holds both curves; model.pt is the average at the selected epoch (cut right after it)."""
    kw = dict(epochs=4, lr=0.05, head_lr=0.05, patience=4, ema=0.9)
    whole = tune(data, tmp_path, "whole", **kw)
    history = list(csv.DictReader(open(whole.artifact.parent / "history.csv")))
    assert {"val_loss", "val_roc_auc", "ema_val_loss", "ema_val_roc_auc"} <= set(history[0])
    assert [float(h["ema_val_loss"]) for h in history] != [float(h["val_loss"]) for h in history]
    best = min(history, key=lambda h: float(h["ema_val_loss"]))
    assert whole.best_epoch == int(best["epoch"])  # selected on the average's loss
    info = json.loads(whole.artifact.with_suffix(".json").read_text())
    assert info["selected_by"] == "validation loss of the weight average (EMA 0.9)" and info["params"]["ema"] == 0.9

    def stop_after_best(message):
        if message.startswith(f"epoch {whole.best_epoch}/4"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(data, tmp_path, "cut", log=stop_after_best, **kw)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    saved = torch.load(whole.artifact, weights_only=True)
    averaged, raw = last["average"]["module"], last["model"]
    assert all(torch.equal(averaged[k], saved[k]) for k in saved)
    assert not all(torch.equal(raw[k], saved[k]) for k in saved)
    resumed = tune(data, tmp_path, "cut", resume=True, **kw)  # the average resumes with the rest
    again = torch.load(resumed.artifact, weights_only=True)
    assert resumed.best_epoch == whole.best_epoch and all(torch.equal(again[k], saved[k]) for k in saved)


def test_select_auc_picks_the_epoch_of_highest_validation_auc(tmp_path):
    """Shuffled labels make the validation AUC wander, so its best epoch is not the loss's."""
    paths = sorted(make_folder(tmp_path / "data", per_class=12).rglob("*.jpeg"))
    labels = np.random.default_rng(0).permutation([p.parent.name for p in paths])
    manifest = tmp_path / "shuffled.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},{label},{'val' if i % 3 == 0 else 'train'}\n"
                                                      for i, (p, label) in enumerate(zip(paths, labels))))
    result = tune(manifest, tmp_path, "auc", epochs=5, lr=0.01, head_lr=0.01, patience=5, select="auc",
                  val_fraction=None)
    history = list(csv.DictReader(open(result.artifact.parent / "history.csv")))
    aucs = [float(h["val_roc_auc"]) for h in history]
    losses = [float(h["val_loss"]) for h in history]
    by_auc = max(range(len(history)), key=lambda i: (aucs[i], -losses[i])) + 1
    assert result.best_epoch == by_auc
    assert by_auc != int(np.argmin(losses)) + 1, "the fixture must have its best AUC and best loss apart"
    info = json.loads(result.artifact.with_suffix(".json").read_text())
    assert info["selected_by"] == "validation ROC-AUC of the trained weights"


def test_a_fine_tune_continues_from_another_with_its_weights(data, tmp_path):
    """Nothing trained (head lr 0, backbone frozen): the child is its parent, head kept; with other classes the
    backbone is the parent's and the head starts afresh, as the log says; compare shows the lineage."""
    parent = tune(data, tmp_path, "parent", epochs=1, lr=0.05, head_lr=0.05)
    said = []
    child = tune(data, tmp_path, "child", weights=str(parent.artifact.parent), unfreeze="none", head_lr=0.0,
                 log=said.append)
    before, after = (torch.load(p, weights_only=True) for p in (parent.artifact, child.artifact))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any("backbone and head: same classes" in line for line in said)
    info = json.loads(child.artifact.with_suffix(".json").read_text())
    assert info["started_from"]["sha256"] == json.loads(parent.artifact.with_suffix(".json").read_text())["sha256"]
    rows = {r["artifact"]: r for r in featx.compare(data, split="val", cache_dir=tmp_path / "cache",
                                                     models_dir=tmp_path)}
    assert rows[str(child.artifact)]["method"] == "timm:test_efficientnet fine-tune [64 px, from parent]"

    other = make_folder(tmp_path / "other", per_class=8, classes=("COVID", "NORMAL", "VIRAL"))
    said.clear()
    third = tune(other, tmp_path, "third", weights=str(parent.artifact), unfreeze="none", head_lr=0.0,
                 log=said.append)
    state = torch.load(third.artifact, weights_only=True)
    assert state["head.weight"].shape[0] == 3
    assert all(torch.equal(before[k], state[k]) for k in before if k.startswith("backbone."))
    assert any("head re-initialised" in line for line in said)


def test_weights_that_are_not_a_fine_tune_of_this_backbone_are_one_line(data, tmp_path):
    other = featx.finetune(data, "timm:test_convnext", **{**QUICK, "cache_dir": tmp_path / "cache"}, epochs=1)
    message = one_line_error(run("finetune", "--data", data, *ARGS, "--weights", other.artifact.parent,
                                 "--cache", tmp_path / "cache"))
    assert "is a fine-tune of timm:test_convnext, not of timm:test_efficientnet" in message
    [head] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg", cache_dir=tmp_path / "cache")
    message = one_line_error(run("finetune", "--data", data, *ARGS, "--weights", head.artifact, "--cache",
                                 tmp_path / "cache"))
    assert "is a featx logreg head" in message and "not a fine-tune" in message


@pytest.mark.parametrize("args, said", [
    (["--ema", "1.5"], "--ema is the decay of the weight average and must lie in (0, 1)"),
    (["--select", "acc"], "--select must be one of loss, auc, not 'acc'"),
    (["--drop-path", "1.2"], "--drop-path is a rate and must lie in [0, 1)"),
    (["--mixup", "-1"], "--mixup and --cutmix are Beta(alpha, alpha) parameters"),
])
def test_bad_new_options_are_one_line(data, args, said):
    assert said in one_line_error(run("finetune", "--data", data, *ARGS, "--weights", "random", *args))


def test_drop_path_changes_outputs_in_train_mode_only():
    plain = featx.create_backbone("timm:test_vit", "random", frozen=False).model
    dropped = featx.create_backbone("timm:test_vit", "random", frozen=False, drop_path=0.5).model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), dropped.eval()(x), atol=1e-6)
        torch.manual_seed(0)
        a = plain.train()(x)
        torch.manual_seed(0)
        b = dropped.train()(x)
    assert not torch.allclose(a, b, atol=1e-4)


def test_drop_path_on_an_architecture_without_it_is_one_line(data):
    message = one_line_error(run("finetune", "--data", data, *ARGS, "--weights", "random", "--backbone",
                                 "xception", "--drop-path", "0.1"))
    assert message.startswith("Error: --drop-path: xception (legacy_xception") and "has no stochastic depth" in message


def test_every_new_option_is_in_the_run_hash():
    """Each option changes the hash when set; at the old behaviour it is left out, so old run folders keep their names."""
    from featx._core.hashing import record_hash

    plain = FinetuneConfig()
    assert set(plain.hashed()) == set(plain.record()) - {"ema", "select", "drop_path", "mixup", "cutmix", "tta",
                                                         "precision"}
    names = {record_hash(FinetuneConfig(**{k: v}).hashed()) for k, v in
             [("ema", 0.999), ("select", "auc"), ("drop_path", 0.1), ("mixup", 0.2), ("cutmix", 1.0), ("tta", "hflip"),
              ("augment", "randaugment"), ("augment", "trivialaugment"), ("weights", "my-run/model.pt"),
              ("precision", "bf16")]}
    assert len(names) == 10 and record_hash(plain.hashed()) not in names


def test_mixup_targets_and_soft_loss():
    """One-hot targets give the class-weighted hard loss; an odd batch mixes all but its last image."""
    loss = WeightedLoss(torch.tensor([0.5, 2.0]), 0.0)
    logits, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    hard = loss.parts(logits, y)
    soft = loss.parts(logits, y, torch.eye(2)[y])
    assert torch.allclose(hard[0], soft[0]) and torch.allclose(hard[1], soft[1])
    np.random.seed(0)
    x, target = Mixing(1.0, 0.0, 0.1, 2)(torch.randn(5, 3, 8, 8), y)
    assert x.shape == (5, 3, 8, 8) and torch.allclose(target.sum(1), torch.ones(5))
    assert torch.allclose(target[4], torch.tensor([0.05, 0.95]))


def test_mixup_tta_and_randaugment_train_and_predict_as_evaluated(data, tmp_path):
    """A run with every regulariser ends; featx predict (hflip TTA from the recipe) gives its stored val predictions."""
    result = tune(data, tmp_path, "reg", epochs=2, mixup=0.4, cutmix=1.0, augment="randaugment", tta="hflip",
                  drop_path=0.1)
    model = featx.load(result.artifact)
    assert model.feature_recipe.tta == "hflip"
    stored = load_predictions(result.artifact)["val"]
    paths = [data / p for p in stored["path"]]
    assert np.allclose(model.predict_proba(paths), stored["proba"], atol=1e-5)
