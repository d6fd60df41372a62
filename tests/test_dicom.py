"""DICOM input: files built with pydicom from small generated images, read by the display rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

import featx  # noqa: E402
from featx.data.images import ImageError, load_image  # noqa: E402

from conftest import TINY, save, xray_like  # noqa: E402

CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def write_dicom(path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits_stored=None, syntax=ExplicitVRLittleEndian,
                pixel_data: bytes | None = None, **tags):
    """A DICOM Part 10 file of `pixels` (rows x cols, or frames x rows x cols with NumberOfFrames)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def full_range(seed=0) -> np.ndarray:
    """An 8-bit picture that spans 0..255, so a min-max stretch leaves it as it is."""
    image = xray_like(seed)
    image[0, 0], image[0, 1] = 0, 255
    return image


def test_8_bit_monochrome2_gives_the_pixels_of_its_png(tmp_path):
    pixels = full_range()
    png = np.asarray(load_image(save(tmp_path / "a.png", pixels)))
    dicom = load_image(write_dicom(tmp_path / "a.dcm", pixels))
    assert dicom.mode == "L" and np.array_equal(np.asarray(dicom), png)


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    pixels = full_range(1)
    shown = np.asarray(load_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")))
    assert np.array_equal(shown, 255 - pixels)


def test_rescale_then_window_give_the_values_worked_out_by_hand(tmp_path):
    stored = np.array([[0, 400, 512, 700], [900, 1100, 4095, 256]], np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=0, WindowWidth=2000)
    value = 2.0 * stored - 1024  # the Modality LUT
    # PS3.3 C.11.2.1.2.1, LINEAR: below c - 0.5 - (w - 1) / 2 the lowest output, above c - 0.5 + (w - 1) / 2
    # the highest, between ((x - (c - 0.5)) / (w - 1) + 0.5) of the range; here onto 0..255
    c, w = 0.0, 2000.0
    expected = np.clip(((value - (c - 0.5)) / (w - 1) + 0.5), 0, 1)
    expected[value <= c - 0.5 - (w - 1) / 2] = 0
    expected[value > c - 0.5 + (w - 1) / 2] = 1
    shown = np.asarray(load_image(path))
    np.testing.assert_array_equal(shown, np.rint(expected * 255).astype(np.uint8))
    assert shown[0, 0] == 0 and shown[1, 2] == 255 and shown[0, 2] == 128


def test_without_a_window_the_modality_values_are_stretched(tmp_path):
    stored = (xray_like(2).astype(np.uint16) * 16 + 100)  # 12-bit data
    shown = np.asarray(load_image(write_dicom(tmp_path / "s.dcm", stored, bits_stored=12)))
    expected = np.rint((stored - stored.min()) / (stored.max() - stored.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(shown, expected)


def test_a_multi_frame_file_gives_its_first_frame(tmp_path):
    frames = np.stack([full_range(3), full_range(4)])
    shown = np.asarray(load_image(write_dicom(tmp_path / "d" / "NORMAL" / "mf.dcm", frames)))
    assert np.array_equal(shown, frames[0])
    write_dicom(tmp_path / "d" / "PNEUMONIA" / "one.dcm", frames[1])
    notes = featx.load_dataset(tmp_path / "d").notes()
    assert any("multi-frame DICOM files: 1; featx reads the first frame of each" in n for n in notes)
    assert any("DICOM files without a display window: 2" in n for n in notes)


def test_a_jpeg_baseline_dicom_decodes(tmp_path):
    pytest.importorskip("libjpeg")
    from pydicom.encaps import encapsulate

    pixels = full_range(5)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "j.dcm", pixels, syntax=JPEGBaseline8Bit,
                       pixel_data=encapsulate([buffer.getvalue()]))
    shown = np.asarray(load_image(path)).astype(int)
    assert np.abs(shown - np.asarray(Image.open(buffer)).astype(int)).max() <= 2  # min-max of a lossy copy


def test_extension_less_dicoms_are_listed_and_bad_ones_skipped_with_reasons(tmp_path):
    data = tmp_path / "data"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(3):
            write_dicom(data / name / f"IM-{c}{i}-0001.dcm", full_range(10 * c + i))
        write_dicom(data / name / f"EXPORT{c}", full_range(20 + c))  # as a PACS exports them: no extension
    no_pixels = write_dicom(data / "NORMAL" / "report.dcm", full_range(30))
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    whole = (data / "NORMAL" / "IM-00-0001.dcm").read_bytes()
    (data / "NORMAL" / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.DirectoryRecordSequence = []
    directory.save_as(data / "PNEUMONIA" / "DICOMDIR", enforce_file_format=True)
    (data / "PNEUMONIA" / "README").write_text("not a DICOM file\n")

    said = []
    store = featx.extract(data, TINY, weights="random", workers=0, progress=False, log=said.append)
    listed = store.row_table().path
    assert "NORMAL/EXPORT0" in listed and "PNEUMONIA/README" not in listed
    reasons = dict(store.skipped())
    assert "without pixel data" in reasons["NORMAL/report.dcm"]
    assert "truncated.dcm" in " ".join(reasons) and "DICOMDIR" in reasons["PNEUMONIA/DICOMDIR"]
    assert store.counts()["train"]["done"] == 8
    assert store.config["decode"] == "featx-decode-1+featx-dicom-2:default"
    with pytest.raises(ImageError, match="DICOMDIR"):
        load_image(data / "PNEUMONIA" / "DICOMDIR")


def test_a_jpeg_dataset_records_the_dicom_rules_too(folder):
    """DICOM rules apply file by file: a folder without DICOM files has the same policy as one with them."""
    store = featx.extract(folder, TINY, weights="random", workers=0, progress=False, log=lambda m: None)
    assert store.config["decode"] == "featx-decode-1+featx-dicom-2:default"


def _windowed_folder(root):
    """12-bit X-ray-like DICOMs, half MONOCHROME1, each with its own window tags."""
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(4):
            stored = xray_like(i + 10 * c, bright=bool(c)).astype(np.uint16) * 16
            photometric = "MONOCHROME1" if i % 2 else "MONOCHROME2"
            if photometric == "MONOCHROME1":
                stored = 4095 - stored
            write_dicom(root / name / f"IM-{c}{i:03d}-0001.dcm", stored, bits_stored=12, photometric=photometric,
                        WindowCenter=[2048, 1500], WindowWidth=[3000, 1000], VOILUTFunction="LINEAR")
    return root


def test_the_window_is_chosen_recorded_and_used_again_by_predict(tmp_path):
    from click.testing import CliRunner

    from featx.cli import main

    from conftest import one_line_error

    data = _windowed_folder(tmp_path / "data")
    kw = dict(weights="random", workers=0, progress=False, log=lambda m: None)
    default = featx.extract(data, TINY, **kw)
    narrow = featx.extract(data, TINY, dicom_window="1500,1000", **kw)
    assert narrow.path != default.path and narrow.config["decode"].endswith("featx-dicom-2:1500,1000")
    assert not np.allclose(narrow.arrays()[0], default.arrays()[0])
    first = np.asarray(load_image(data / "NORMAL" / "IM-0000-0001.dcm"))  # the first window of two
    assert np.array_equal(first, np.asarray(load_image(data / "NORMAL" / "IM-0000-0001.dcm", dicom_window="2048,3000")))
    inverted = np.asarray(load_image(data / "NORMAL" / "IM-0001-0001.dcm", dicom_window="minmax"))
    original = xray_like(1).astype(np.uint16) * 16
    expected = np.rint((original - original.min()) / (original.max() - original.min()) * 255)
    assert np.abs(inverted.astype(int) - expected).max() <= 1  # MONOCHROME1 of the inverted values: the original

    [head] = featx.fit(features=narrow.path, head="logreg", log=lambda m: None)
    image = data / "PNEUMONIA" / "IM-1002-0001.dcm"
    features = featx.load(head.artifact).image_features([image])[0]
    row = narrow.paths().index("PNEUMONIA/IM-1002-0001.dcm")
    np.testing.assert_allclose(features[0], narrow.arrays()[0][row], atol=1e-5)

    run = CliRunner().invoke
    assert "--dicom-window takes default, minmax, or CENTRE,WIDTH" in one_line_error(
        run(main, ["extract", "--data", str(data), "--backbone", TINY, "--dicom-window", "wide"]))
    jpegs = tmp_path / "jpegs"
    save(jpegs / "NORMAL" / "a.jpeg", xray_like(1))
    save(jpegs / "PNEUMONIA" / "b.jpeg", xray_like(2))
    assert "has none" in one_line_error(run(main, ["extract", "--data", str(jpegs), "--backbone", TINY,
                                                   "--weights", "random", "--dicom-window", "minmax"]))


def test_patients_come_from_the_header_and_never_reach_the_cache_raw(tmp_path):
    from click.testing import CliRunner

    from featx.cli import main

    data = tmp_path / "data"
    patients = [f"MRN{4711000 + p}" for p in range(10)]
    for p, patient in enumerate(patients):  # two images per patient; file names say nothing of the patient
        for k in range(2):
            write_dicom(data / ("NORMAL", "PNEUMONIA")[p % 2] / f"img{2 * p + k:03d}.dcm", full_range(p * 2 + k),
                        PatientID=patient)
    said = []
    store = featx.extract(data, TINY, weights="random", workers=0, progress=False, val_fraction=0.4, log=said.append)
    table = store.row_table()
    groups = dict(zip(table.path, table.group))
    assert len(set(groups.values())) == 10 and all(g.startswith("patient-") for g in groups.values())
    split = dict(zip(table.path, table.split))
    for p in range(10):
        pair = [f"{('NORMAL', 'PNEUMONIA')[p % 2]}/img{2 * p + k:03d}.dcm" for k in range(2)]
        assert groups[pair[0]] == groups[pair[1]] and split[pair[0]] == split[pair[1]]  # one side of the split
    assert any("from their PatientID" in line for line in said)
    stored = store.path.read_bytes() + (store.path.parent / "split.json").read_bytes()
    assert not any(patient.encode() in stored for patient in patients)
    assert not any(patient.encode("utf-16-le") in stored for patient in patients)
    info = CliRunner().invoke(main, ["info", str(store.path)])
    assert "no raw patient ID is stored" in info.output

    again = featx.extract(data, TINY, weights="random", workers=0, progress=False, log=lambda m: None)
    assert again.row_table().group == table.group  # the same key, the same hashes
    by_name = featx.load_dataset(data, group_pattern=r"^(img\d\d)", cache_dir=tmp_path / "other")
    assert set(by_name.groups) == {f"img{k:02d}" for k in range(2)}  # a pattern given wins over the header


def test_a_sigmoid_window_and_a_voi_lut_sequence_follow_the_standard(tmp_path):
    stored = full_range(6)
    c, w = 100.0, 50.0
    sigmoid = np.asarray(load_image(write_dicom(tmp_path / "s.dcm", stored, WindowCenter=c, WindowWidth=w,
                                                VOILUTFunction="SIGMOID")))
    expected = 255 / (1 + np.exp(-4 * (stored.astype(float) - c) / w))  # PS3.3 C.11.2.1.3.1
    assert np.abs(sigmoid.astype(int) - np.rint(expected)).max() <= 1

    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]  # entries, first value mapped, bits per entry
    lut.add_new(0x00283006, "US", [255 - v for v in range(256)])  # LUT Data: an inverting table
    path = write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[lut], WindowCenter=c, WindowWidth=w)
    assert np.array_equal(np.asarray(load_image(path)), 255 - stored)  # the table wins over the window


def test_a_manifest_of_dicoms_takes_its_own_groups_first(tmp_path):
    rows = ["path,label,group"]
    for k in range(4):
        write_dicom(tmp_path / "scans" / f"s{k}", full_range(k), PatientID=f"P{k // 2}")  # extension-less
        rows.append(f"scans/s{k},{('NORMAL', 'PNEUMONIA')[k % 2]},{'site-a' if k < 3 else ''}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    ds = featx.load_dataset(tmp_path / "list.csv", cache_dir=tmp_path / "cache")
    assert ds.groups[:3] == ["site-a"] * 3 and ds.groups[3].startswith("patient-")
    assert featx.load_dataset(tmp_path / "list.csv", cache_dir=tmp_path / "cache").groups == ds.groups


def test_rgb_pixels_stay_rgb_and_undecodable_pixel_data_is_a_reason(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    rgb = np.stack([full_range(7), full_range(8), full_range(9)], -1)
    path = write_dicom(tmp_path / "rgb.dcm", rgb[..., 0], SamplesPerPixel=3, PhotometricInterpretation="RGB",
                       PlanarConfiguration=0, Rows=rgb.shape[0], Columns=rgb.shape[1], pixel_data=rgb.tobytes())
    shown = load_image(path)
    assert shown.mode == "RGB" and np.array_equal(np.asarray(shown), rgb)
    broken = write_dicom(tmp_path / "ls.dcm", full_range(1), syntax=JPEGLSLossless,
                         pixel_data=encapsulate([b"\xff\xd8 not a JPEG-LS stream \xff\xd9"]))
    with pytest.raises(ImageError, match="cannot decode the pixel data"):
        load_image(broken)


def test_headers_are_read_once_and_again_only_when_a_file_changes(tmp_path, monkeypatch):
    from featx.data import dicom_headers

    for k in range(4):
        write_dicom(tmp_path / "d" / ("NORMAL", "PNEUMONIA")[k % 2] / f"s{k}.dcm", full_range(k), PatientID=f"P{k}")
    read = []
    real = dicom_headers.read_facts
    monkeypatch.setattr(dicom_headers, "read_facts", lambda path, key: read.append(path) or real(path, key))
    first = featx.load_dataset(tmp_path / "d", cache_dir=tmp_path / "c").groups
    assert len(read) == 4
    assert featx.load_dataset(tmp_path / "d", cache_dir=tmp_path / "c").groups == first and len(read) == 4
    write_dicom(tmp_path / "d" / "NORMAL" / "s0.dcm", full_range(0), PatientID="P987")  # a new size, a new patient
    again = featx.load_dataset(tmp_path / "d", cache_dir=tmp_path / "c").groups
    assert len(read) == 5 and again[0] != first[0] and again[1:] == first[1:]
    assert b"P987" not in (tmp_path / "c" / featx.load_dataset(tmp_path / "d").key / "dicom-headers.json").read_bytes()
