"""featx finetune on generated images with a tiny random-init backbone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import featx
from featx._core.accelerators import cpu_has_bf16
from featx.cli import main

from conftest import TINY, final_error, make_folder, one_line_error

QUICK = dict(weights="random", batch_size=4, workers=0, progress=False, image_size=64)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "data", per_class=8)


def tune(data, **kw):
    return featx.finetune(data, TINY, **{**QUICK, "val_fraction": 0.25, **kw})


def test_loss_decreases_and_outputs_are_written(data):
    result = tune(data, epochs=5, lr=1e-2, head_lr=1e-2, augment="none", dropout=0.0, patience=5)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    out = result.artifact.parent
    history = list(csv.DictReader(open(out / "history.csv")))
    assert len(history) == 5 and {"train_loss", "val_loss", "val_accuracy", "val_roc_auc", "lr_backbone",
                                  "seconds", "images_per_second"} <= set(history[0])
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "metrics.json").exists()
    assert set(result.metrics) == {"train", "val"} and result.metrics["val"]["n"] == 4
    # Checkpoints hold tensors and plain data only.
    assert "head.weight" in torch.load(result.artifact, weights_only=True)
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 5


def _backbone_state(state):
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def test_frozen_parameters_and_batchnorm_statistics_stay_unchanged(data):
    initial = featx.create_backbone(TINY, "random").model.state_dict()
    frozen = torch.load(tune(data, epochs=2, unfreeze="none").artifact, weights_only=True)
    assert all(torch.equal(v, initial[k]) for k, v in _backbone_state(frozen).items())  # running stats too

    top = torch.load(tune(data, epochs=1, unfreeze="last:1").artifact, weights_only=True)
    changed = {k for k, v in _backbone_state(top).items() if not torch.equal(v, initial[k])}
    assert changed and all(not k.startswith(("conv_stem", "bn1", "blocks.0")) for k in changed), changed


def test_resume_after_an_interruption_equals_an_uninterrupted_run(data, tmp_path):
    whole = tune(data, epochs=3, out_dir=tmp_path / "whole")

    def interrupt_after_epoch_2(message):
        if message.startswith("epoch 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(data, epochs=3, out_dir=tmp_path / "cut", log=interrupt_after_epoch_2)
    with pytest.raises(featx.FeatxError, match="--resume"):
        tune(data, epochs=3, out_dir=tmp_path / "cut")
    resumed = tune(data, epochs=3, out_dir=tmp_path / "cut", resume=True)
    a = torch.load(whole.artifact, weights_only=True)
    b = torch.load(resumed.artifact, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == whole.metrics and len(resumed.history) == 3
    # The best weights live on in model.pt only; resuming the finished run gives it back unchanged.
    assert not (tmp_path / "cut" / "best_weights.pt").exists()
    again = tune(data, epochs=3, out_dir=tmp_path / "cut", resume=True)
    c = torch.load(again.artifact, weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a) and again.metrics == whole.metrics


def test_artifact_predicts_through_featx_predict(data, tmp_path):
    result = tune(data, epochs=1, threshold="youden")
    out = tmp_path / "preds.csv"
    predicted = run("predict", "--model", result.artifact, "--output", out, data)
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 16 and all(r["predicted"] in ("NORMAL", "PNEUMONIA") for r in rows)
    model = featx.load(result.artifact)
    assert type(model).__name__ == "FineTunedClassifier" and model.threshold == result.threshold
    # Every row against the probabilities saved at training time (another code path: the epoch loop).
    import numpy as np

    saved = np.load(result.artifact.with_suffix(".predictions.npz"), allow_pickle=False)
    at_training = {}
    for split in ("train", "val"):
        at_training.update(zip(saved[f"{split}__path"].tolist(), saved[f"{split}__proba"][:, 1]))
    assert len(at_training) == 16
    for r in rows:
        relative = str(Path(r["path"]).relative_to(data))
        assert float(r["p_PNEUMONIA"]) == pytest.approx(at_training[relative], abs=1e-5), relative


@pytest.mark.parametrize("pca", [None, 3])
def test_linear_probe_head_initialises_the_fine_tuned_head(data, pca):
    """--init-head-from: with nothing trained (lr 0, frozen backbone) it predicts like the logreg head,
    its scaler (and PCA, also linear) folded into the linear layer."""
    featx.extract(data, TINY, weights="random", val_fraction=0.25, workers=0, progress=False)
    [probe] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg", pca=pca)
    result = featx.finetune(data, TINY, weights="random", batch_size=4, workers=0, progress=False, epochs=1,
                            init_head_from=probe.artifact, unfreeze="none", lr=0.0, head_lr=0.0)
    paths = [str(p) for p in sorted(data.rglob("*.jpeg"))]
    expected = featx.load(probe.artifact).predict_proba(paths)
    assert torch.allclose(torch.tensor(featx.load(result.artifact).predict_proba(paths)), torch.tensor(expected),
                          atol=1e-4)


# --- refusals ----------------------------------------------------------------------------------------

ARGS = ["--backbone", TINY, "--weights", "random", "--workers", "0", "--no-progress", "--image-size", "64",
        "--batch-size", "4"]


def test_unfreeze_beyond_the_blocks_is_one_line(data):
    line = one_line_error(run("finetune", "--data", data, *ARGS, "--val-fraction", "0.25", "--unfreeze", "last:99"))
    assert "last:99" in line and "blocks" in line


def test_no_validation_split_is_one_line(data):
    assert "--val-fraction" in one_line_error(run("finetune", "--data", data, *ARGS))


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bfloat16_on_a_cpu_trains_a_run_of_its_own_that_resumes_exactly(data, tmp_path):
    fp32 = tune(data, epochs=2, out_dir=None)
    whole = tune(data, epochs=2, precision="bf16")
    assert whole.artifact.parent != fp32.artifact.parent  # a run of its own, never resumed from a float32 one
    assert featx.load(whole.artifact).info["features"]["config"]["precision"] == "amp-bf16"
    from featx.artifacts.sidecar import Sidecar

    assert Sidecar.from_json(featx.load(whole.artifact).info).method.label == f"{TINY} fine-tune [64 px, bf16]"
    assert featx.load(fp32.artifact).info["features"]["config"]["precision"] == "fp32"
    a, b = torch.load(whole.artifact, weights_only=True), torch.load(fp32.artifact, weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)

    def interrupt_after_epoch_1(message):
        if message.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(data, epochs=2, precision="bf16", out_dir=tmp_path / "cut", log=interrupt_after_epoch_1)
    resumed = tune(data, epochs=2, precision="bf16", out_dir=tmp_path / "cut", resume=True)
    c = torch.load(resumed.artifact, weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a) and resumed.metrics == whole.metrics


def test_bfloat16_is_refused_in_one_line_on_a_cpu_without_it(data, monkeypatch):
    from featx._core import accelerators

    monkeypatch.setattr(accelerators, "cpu_has_bf16", lambda: False)
    error = one_line_error(run("finetune", "--data", data, "--backbone", TINY, "--weights", "random", "--device",
                               "cpu", "--val-fraction", "0.25", "--precision", "bf16", "--no-progress"))
    assert "--precision bf16 needs a CPU that computes in bfloat16 natively" in error
    assert "--precision must be one of auto, fp32, bf16, not 'fp16'" in one_line_error(
        run("finetune", "--data", data, "--backbone", TINY, "--precision", "fp16"))


def test_resume_from_another_configuration_is_refused(data, tmp_path):
    tune(data, epochs=1, out_dir=tmp_path / "run")
    line = one_line_error(run("finetune", "--data", data, *ARGS, "--epochs", "1", "--out", tmp_path / "run",
                              "--lr", "0.5", "--resume"))
    assert "another configuration" in line


def test_a_nan_loss_stops_with_a_clear_message(data):
    result = run("finetune", "--data", data, *ARGS, "--val-fraction", "0.25", "--epochs", "3",
                 "--lr", "1e30", "--head-lr", "1e30", "--clip-grad", "0")
    last = final_error(result)  # after the run's own progress lines
    assert last.startswith("Error: the training loss became") and "Lower --lr" in last


def test_init_head_from_another_backbone_is_refused(data, tmp_path):
    featx.extract(data, "timm:test_convnext", weights="random", val_fraction=0.25, workers=0, progress=False)
    [probe] = featx.fit(data=data, backbone="timm:test_convnext", weights="random", head="logreg")
    line = one_line_error(run("finetune", "--data", data, *ARGS, "--init-head-from", probe.artifact))
    assert "other features" in line


# --- each training option does what it says ---------------------------------------------------------

def test_warmup_trains_the_head_alone_first(data):
    initial = featx.create_backbone(TINY, "random").model.state_dict()
    state = torch.load(tune(data, epochs=1, warmup_epochs=1, lr=1e-2).artifact, weights_only=True)
    assert all(torch.equal(v, initial[k]) for k, v in _backbone_state(state).items())
    trained = torch.load(tune(data, epochs=1, warmup_epochs=0, lr=1e-2).artifact, weights_only=True)
    assert not all(torch.equal(v, initial[k]) for k, v in _backbone_state(trained).items())


def test_clipping_bounds_the_gradient(data):
    """With gradients clipped to 1e-12, AdamW's steps shrink to about lr * 1e-12 / eps: almost nothing moves."""
    initial = featx.create_backbone(TINY, "random").model.state_dict()

    def moved(**kw):
        state = torch.load(tune(data, epochs=1, lr=1e-2, weight_decay=0.0, **kw).artifact, weights_only=True)
        return max((v.float() - initial[k].float()).abs().max().item()
                   for k, v in _backbone_state(state).items() if v.is_floating_point() and "running" not in k)

    assert moved(clip_grad=1e-12) < 1e-3 * moved(clip_grad=0)


def test_schedules_and_label_smoothing():
    from featx.finetuning.training import WeightedLoss, make_scheduler

    def lrs(schedule):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = make_scheduler(optimizer, schedule, 100, [0.1])
        out = []
        for _ in range(100):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cosine, onecycle = lrs("cosine"), lrs("onecycle")
    assert cosine[0] == 0.1 and all(a >= b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 1e-3
    peak = max(range(100), key=onecycle.__getitem__)
    assert 8 <= peak <= 11 and onecycle[peak] == pytest.approx(0.1) and onecycle[0] < 0.01 and onecycle[-1] < 1e-4
    logits, y = torch.tensor([[-20.0, 20.0]]), torch.tensor([1])
    plain, smoothed = (WeightedLoss(torch.ones(2), s).parts(logits, y)[0].item() for s in (0.0, 0.1))
    assert plain < 1e-6 and smoothed == pytest.approx(0.05 * 40, rel=1e-4)  # 0.05 of the target on the other class


def test_augment_modes():
    from PIL import Image

    from conftest import xray_like
    from featx.data.transforms import EvalTransform, TrainTransform

    config = {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875, "mean": [0.5] * 3,
              "std": [0.5] * 3}
    image = Image.fromarray(xray_like(3))
    reference = EvalTransform(config)(image)
    assert torch.equal(TrainTransform(config, "none")(image), reference)
    for mode in ("xray", "natural"):
        t = TrainTransform(config, mode)
        torch.manual_seed(0)
        a, b = t(image), t(image)
        assert a.shape == reference.shape == (3, 32, 32) and a.dtype == torch.uint8
        assert not torch.equal(a, b) and not torch.equal(a, reference)  # random, and not the eval view
    corrupted = TrainTransform(config, "corrupt")
    torch.manual_seed(1)
    first = [corrupted(image) for _ in range(6)]
    torch.manual_seed(1)
    again = [corrupted(image) for _ in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # seeded: an epoch repeats exactly
    assert all(x.shape == reference.shape for x in first) and sum(not torch.equal(x, reference) for x in first) >= 5
    assert len({x.numpy().tobytes() for x in first}) == 6  # another corruption, severity or draw each time
    flips = {mode: any("Flip" in type(op).__name__ for op in TrainTransform(config, mode).ops.transforms)
             for mode in ("xray", "natural")}
    assert flips == {"xray": False, "natural": True}  # anatomy is not mirror-symmetric


def test_the_saved_model_is_the_best_epochs(data, tmp_path):
    """model.pt holds the weights of the epoch with the lowest validation loss, not the last epoch's."""
    kw = dict(epochs=4, lr=0.3, head_lr=0.3, patience=4)
    whole = tune(data, out_dir=tmp_path / "whole", **kw)
    best = min(whole.history, key=lambda h: h["val_loss"])["epoch"]
    assert best < 4, "the fixture must have its best epoch before the last"

    def stop_after_best(message):
        if message.startswith(f"epoch {best}/4"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(data, out_dir=tmp_path / "cut", log=stop_after_best, **kw)
    at_best = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    saved = torch.load(whole.artifact, weights_only=True)
    assert at_best.keys() == saved.keys() and all(torch.equal(at_best[k], saved[k]) for k in saved)


@pytest.mark.parametrize("n", [20, 36, 37, 50, 16, 7])
def test_an_epoch_sees_every_training_image_once(n):
    """A short last batch joins the one before it; no batch is lost or doubled (before: with 3 batches, the
    first was overwritten by the merged second, so its images were never trained on and others twice)."""
    from featx.finetuning.training import epoch_batches

    batches = epoch_batches(n, 16, seed=0, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) >= 8 for b in batches) or len(batches) == 1
