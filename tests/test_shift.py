"""featx shift: a domain classifier tells two splits apart when their images differ, and not otherwise."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

import featx
from featx.cli import main
from featx.studies.shift import measure_shift

from conftest import TINY, save, write_store, one_line_error, xray_like


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _two_splits(root, brighter_test: bool, per_class: int = 16):
    """root/{train,test}/<class>/*.jpeg: one patient per image; test brighter when asked."""
    for split in ("train", "test"):
        for c, name in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(per_class):
                seed = i + 100 * c + (1000 if split == "test" else 0)
                image = xray_like(seed, size=(48, 48)).astype(np.int16) + (60 if c else 0)
                if brighter_test and split == "test":
                    image = image + 70
                save(root / split / name / f"IM-{seed:04d}-0001.jpeg", np.clip(image, 0, 255).astype(np.uint8))
    return root


def test_a_brighter_test_split_is_told_apart(tmp_path):
    data = _two_splits(tmp_path / "d", brighter_test=True)
    result = run("shift", "--data", data, "--backbone", TINY, "--weights", "random", "--cache", tmp_path / "c",
                 "--top", "3", "--output", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    for name in ("shift-train-test.png", "shift-train-test-unlike.png"):
        assert Image.open(tmp_path / "figures" / name).size[0] > 500
    found = featx.shift(data=data, backbone=TINY, weights="random", cache_dir=tmp_path / "c", n_boot=200, log=print)
    assert found.domain_auc > 0.95 and found.domain_ci[0] > 0.8
    assert all(v is not None and v[0] > 0.9 for v in found.per_class.values())  # within each class too
    assert f"train -> test shift: domain AUC {found.domain_auc:.3f}" in result.output
    assert "class shares: train NORMAL 50%, PNEUMONIA 50%; test NORMAL 50%, PNEUMONIA 50%" in result.output
    assert len(found.unlike) == 10 and all(p.startswith("test/") for p, _, _ in found.unlike)
    ratios = [r for _, _, r in found.unlike]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1
    fitted = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--cache", tmp_path / "c")
    assert fitted.exit_code == 0, fitted.output
    compared = run("compare", "--data", data, "--cache", tmp_path / "c", "--out", tmp_path / "report",
                   "--heatmaps", "0")
    assert (f"train -> test shift ({TINY} features): domain AUC {found.domain_auc:.2f} [{found.domain_ci[0]:.2f}, "
            f"{found.domain_ci[1]:.2f}]; thresholds chosen on validation may not transfer") in " ".join(
        compared.output.split())  # the note is wrapped to the terminal's 100 columns
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Where the test images lie among the train images (t-SNE of PCA-" in page
    assert "The test images most unlike train" in page


def test_the_map_separates_shifted_splits_and_keeps_every_image():
    from featx.studies.shift import embed_2d

    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(60, 20)), rng.normal(size=(60, 20)) + 4.0])
    xy, method = embed_2d(X)
    assert xy.shape == (120, 2) and method == "t-SNE of PCA-20"
    centre_gap = np.linalg.norm(xy[:60].mean(0) - xy[60:].mean(0))
    assert centre_gap > 3 * max(xy[:60].std(0).max(), xy[60:].std(0).max())


def test_random_halves_of_one_set_show_no_shift(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 12))
    y = np.arange(160) % 2
    split = np.where(rng.permutation(160) < 80, "train", "test")
    store = write_store(tmp_path / "s.h5", X, y, split)
    found = measure_shift(store, ("train", "test"), n_boot=300)
    assert abs(found.domain_auc - 0.5) < 0.15 and found.domain_ci[0] < 0.5 < found.domain_ci[1]
    shifted = X + np.where(split == "test", 1.0, 0.0)[:, None] * np.r_[1.5, np.zeros(11)]  # one feature moves
    moved = measure_shift(write_store(tmp_path / "m.h5", shifted, y, split), n_boot=300)
    assert moved.domain_auc > 0.8 and moved.domain_ci[0] > 0.5


def test_missing_split_and_bad_splits_are_one_line(tmp_path, folder):
    store = write_store(tmp_path / "s.h5", np.zeros((8, 3)), np.arange(8) % 2, np.array(["train"] * 8)).path
    assert "has no test images" in one_line_error(run("shift", "--features", store))
    assert "names two different splits" in one_line_error(run("shift", "--features", store, "--splits", "train,train"))
