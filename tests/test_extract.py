import h5py
import numpy as np
import pytest

import featx
from featx import FeatureStore, FeatxError
from featx.data.decode_policy import DecodePolicy
from featx.features.store import StoreWriter

from conftest import TINY, make_folder, save, xray_like

FAST = dict(backbone=TINY, weights="random", workers=0, progress=False, log=lambda m: None, device="cpu")


def _features(store: FeatureStore):
    with h5py.File(store.path, "r") as f:
        return f["features"][:], f["done"][:]


def test_store_is_plain_hdf5_with_the_documented_layout(folder):
    store = featx.extract(folder, batch_size=4, **FAST)
    with h5py.File(store.path, "r") as f:
        assert {"features", "label", "split", "path", "group", "sha1", "done", "skipped"} <= set(f)
        n = f["features"].shape[0]
        assert n == 12 and f["done"][:].all()
        assert f["features"].chunks == (12, f["features"].shape[1])  # min(rows per chunk, N)
        assert f["features"].maxshape[0] is None
        assert [c.decode() if isinstance(c, bytes) else c for c in f.attrs["class_names"]] == ["NORMAL", "PNEUMONIA"]
    cfg = store.config
    assert cfg["backbone"] == TINY and cfg["data_config"]["input_size"] == [3, 160, 160]
    assert len(cfg["weights_sha256"]) == 64 and cfg["torch_version"] and cfg["timm_version"] and cfg["device"] == "cpu"
    X, y = store.arrays("train")
    assert X.shape == (12, store.num_features) and X.dtype == np.float32 and np.isfinite(X).all()
    assert list(y) == [0] * 6 + [1] * 6
    assert store.paths("train")[0].startswith("NORMAL/")
    assert store.path.parent.parent == folder.parent / "cache" and TINY.replace(":", "_") in store.path.name


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, folder, monkeypatch):
    whole = featx.extract(folder, batch_size=3, cache_dir=tmp_path / "a", **FAST)
    calls = {"n": 0}
    real_write = StoreWriter.write

    def crash_after_two(self, rows, feats):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        calls["n"] += 1
        real_write(self, rows, feats)

    monkeypatch.setattr(StoreWriter, "write", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        featx.extract(folder, batch_size=3, cache_dir=tmp_path / "b", **FAST)
    monkeypatch.setattr(StoreWriter, "write", real_write)
    partial = FeatureStore(next((tmp_path / "b").glob("*/*.h5")))
    assert partial.counts()["train"] == {"done": 6, "skipped": 0, "pending": 6}
    assert not partial.complete
    assert len(partial.arrays("train")[0]) == 6  # readers see finished rows only

    resumed = featx.extract(folder, batch_size=3, cache_dir=tmp_path / "b", **FAST)
    a, b = _features(whole), _features(resumed)
    assert np.array_equal(a[0], b[0]) and b[1].all()


def test_features_do_not_depend_on_batch_size(tmp_path, folder):
    one = featx.extract(folder, batch_size=1, cache_dir=tmp_path / "a", **FAST)
    five = featx.extract(folder, batch_size=5, cache_dir=tmp_path / "b", **FAST)
    np.testing.assert_allclose(one.arrays()[0], five.arrays()[0], rtol=1e-4, atol=1e-5)


def test_rerun_reuses_and_only_new_or_changed_files_are_extracted(folder):
    messages = []
    first = featx.extract(folder, batch_size=4, **{**FAST, "log": messages.append})
    X0 = dict(zip(first.paths(), first.arrays()[0]))
    featx.extract(folder, batch_size=4, **{**FAST, "log": messages.append})
    assert "already cached, nothing to extract" in messages[-1]

    changed = folder / "NORMAL" / "IM-1000-0001.jpeg"
    save(changed, xray_like(999), quality=90)  # new bytes under an old name
    save(folder / "PNEUMONIA" / "person999_virus_1.jpeg", xray_like(7, bright=True), quality=90)
    messages.clear()
    store = featx.extract(folder, batch_size=4, **{**FAST, "log": messages.append})
    assert any("extracting 2 of 13 images" in m for m in messages)
    X1 = dict(zip(store.paths(), store.arrays()[0]))
    assert len(X1) == 13
    assert not np.allclose(X1["NORMAL/IM-1000-0001.jpeg"], X0["NORMAL/IM-1000-0001.jpeg"])
    assert np.array_equal(X1["NORMAL/IM-1000-0002.jpeg"], X0["NORMAL/IM-1000-0002.jpeg"])


def test_cache_made_differently_is_refused(tmp_path, folder):
    out = tmp_path / "mine.h5"
    featx.extract(folder, output=out, **FAST)
    with pytest.raises(FeatxError, match=r"mine.h5 was made differently \(backbone: cache has timm:test_efficientnet"):
        featx.extract(folder, output=out, **{**FAST, "backbone": "timm:test_convnext"})
    with pytest.raises(FeatxError, match="made differently"):
        featx.extract(folder, output=out, **{**FAST, "dtype": "float16"})
    assert FeatureStore(out).complete  # the refused runs left it intact


def test_different_configs_get_different_cache_files(folder):
    a = featx.extract(folder, **FAST)
    b = featx.extract(folder, **{**FAST, "tta": "hflip"})
    c = featx.extract(folder, **{**FAST, "dtype": "float16"})
    assert len({a.path, b.path, c.path}) == 3
    assert c.arrays()[0].dtype == np.float16
    assert not np.allclose(a.arrays()[0], b.arrays()[0])


def test_bad_images_are_skipped_recorded_and_reported(mixed_folder):
    messages = []
    store = featx.extract(mixed_folder, batch_size=4, **{**FAST, "log": messages.append})
    skipped = dict(store.skipped())
    assert set(skipped) == {"NORMAL/truncated.jpeg", "NORMAL/empty.jpg", "NORMAL/notes.jpg"}
    assert "empty file" in skipped["NORMAL/empty.jpg"]
    assert "truncated" in skipped["NORMAL/truncated.jpeg"]
    assert any("skipped 3 unreadable images" in m for m in messages)
    readable = set(store.paths())
    assert {"NORMAL/gray.png", "NORMAL/sixteen.png", "NORMAL/rgba.png", "NORMAL/palette.bmp",
            "NORMAL/cmyk.JPG", "NORMAL/tiff16.tif"} <= readable
    assert store.counts()["train"]["skipped"] == 3 and store.complete
    messages.clear()
    featx.extract(mixed_folder, batch_size=4, **{**FAST, "log": messages.append})
    assert "nothing to extract" in messages[-1]  # skipped files are not retried until their bytes change


def test_inner_layer_features(folder):
    store = featx.extract(folder, layer="blocks.1", **FAST)
    assert store.config["layer"] == "blocks.1"
    assert store.num_features == featx.create_backbone(TINY, "random", layer="blocks.1").num_features


def test_group_split_is_stored_in_the_cache(tmp_path):
    root = make_folder(tmp_path / "d", 12)
    store = featx.extract(root, val_fraction=0.3, **FAST)
    train, val = set(store.groups("train")), set(store.groups("val"))
    assert val and train and not (train & val)


def test_workers_give_the_same_features(tmp_path, folder):
    a = featx.extract(folder, batch_size=4, cache_dir=tmp_path / "a", **FAST)
    b = featx.extract(folder, batch_size=4, cache_dir=tmp_path / "b", **{**FAST, "workers": 2})
    assert np.array_equal(a.arrays()[0], b.arrays()[0])


def test_pil_draft_decode_is_recorded_and_close_to_full_decoding(tmp_path):
    from PIL import Image

    root = tmp_path / "big"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(3):  # full-size X-rays: big enough for 1/4-scale decoding
            array = np.kron(xray_like(i + 10 * c, size=(150, 120), bright=bool(c)), np.ones((8, 8), np.uint8))
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / name / f"IM-{i:04d}-0001.jpeg", quality=92)
    exact = featx.extract(root, **FAST)
    draft = featx.extract(root, decode="pil-draft", **FAST)
    assert draft.path != exact.path and DecodePolicy.parse(draft.config["decode"]).mode == "pil-draft"
    X, Y = exact.arrays()[0], draft.arrays()[0]
    cosine = (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))
    assert not np.array_equal(X, Y) and cosine.min() > 0.95
