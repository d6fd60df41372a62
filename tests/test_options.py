"""Option values are checked once, at every public entry, by the rules the CLI uses: the same one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, one_line_error, three_way, toy_features, write_store

QUIET = dict(weights="random", workers=0, progress=False, log=lambda m: None)


def cli(*args) -> str:
    """The CLI's one line for bad input, without its 'Error: ' prefix."""
    return one_line_error(CliRunner().invoke(main, [str(a) for a in args])).removeprefix("Error: ")


def api(call) -> str:
    with pytest.raises(featx.FeatxError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("option, value, expected", [
    ("tta", "hflp", "--tta must be one of none, hflip, not 'hflp'"),
    ("decode", "nvjpeg", "--decode must be one of pil, pil-draft, device, not 'nvjpeg'"),
    ("dtype", "float64", "--dtype must be one of float32, float16, not 'float64'"),
    ("device", "gpu", "--device must be auto, cpu, cuda, cuda:N or mps, not 'gpu'"),
])
def test_extract_option_gets_the_same_line_from_api_and_cli(folder, option, value, expected):
    assert api(lambda: featx.extract(folder, TINY, **{option: value}, **QUIET)) == expected
    assert cli("extract", "--data", folder, "--backbone", TINY, "--weights", "random",
               f"--{option}", value) == expected


@pytest.mark.parametrize("option, value", [("tta", "hflp"), ("decode", "nvjpeg"), ("device", "gpu"),
                                           ("batch_size", "0")])
def test_feature_extractor_checks_its_options_when_used(folder, option, value):
    paths = [str(p) for p in sorted(folder.rglob("*.jpeg"))[:2]]
    extractor = featx.FeatureExtractor(TINY, weights="random", cache=None, **{option: value})
    line = api(lambda: extractor.fit(paths))  # fit computes nothing: the estimator checks its own options
    assert line.startswith(f"--{option.replace('_', '-')} must be")
    assert api(lambda: extractor.transform(paths)) == line  # transform alone needs no fit


@pytest.mark.parametrize("option, value, expected", [
    ("augment", "mirror", "--augment must be one of xray, natural, randaugment, trivialaugment, corrupt, none, not 'mirror'"),
    ("schedule", "step", "--schedule must be one of cosine, onecycle, not 'step'"),
    ("class_weight", "inverse", "--class-weight must be one of balanced, none, not 'inverse'"),
])
def test_finetune_option_gets_the_same_line_from_api_and_cli(folder, option, value, expected):
    assert api(lambda: featx.finetune(folder, TINY, **{option: value}, **QUIET)) == expected
    assert cli("finetune", "--data", folder, "--backbone", TINY, f"--{option.replace('_', '-')}", value) == expected


def test_fit_and_compare_options(tmp_path):
    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    expected = "--solver must be one of lbfgs, sgd, not 'newton'"
    assert api(lambda: featx.fit(store, solver="newton")) == expected
    assert cli("fit", "--features", store.path, "--solver", "newton") == expected
    expected = "--split must be one of train, val, test, target; not 'holdout'"
    assert api(lambda: featx.compare(split="holdout")) == expected
    assert cli("compare", "--split", "holdout", "--no-report") == expected


def test_device_accepts_a_gpu_index(folder):
    """cuda:1 is a device name the CLI accepts; on a machine without that GPU it is refused as absent."""
    import torch

    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second GPU")
    line = cli("extract", "--data", folder, "--backbone", TINY, "--weights", "random", "--device", "cuda:1")
    assert line.startswith("--device cuda:1 asked for, but PyTorch sees")
    assert api(lambda: featx.predict("nowhere.skops", [folder], device="cuda:2x")).startswith("--device must be")


def test_finetune_options_are_declared_once():
    """`featx finetune`'s options, `featx.finetune(**options)` and a study file's fine-tune options are
    FinetuneConfig's fields, with its defaults: an option added there reaches all three."""
    from dataclasses import fields

    from featx.finetuning.config import FinetuneConfig
    from featx.studies.spec import FINETUNE_OPTIONS

    params = {p.name: p for p in main.commands["finetune"].params}
    for f in fields(FinetuneConfig):
        assert params[f.name].default == f.default, f.name
    assert set(FINETUNE_OPTIONS) < {f.name for f in fields(FinetuneConfig)}
    with pytest.raises(featx.FeatxError, match="unknown fine-tune option 'epoch'"):
        featx.finetune("no-such-folder", epoch=3)


def test_every_cli_default_is_the_api_default():
    """A command's options and its Python function (or the study's StudySpec) declare the same defaults: each
    click default, read as the library reads it, is the function's own, so the CLI cannot drift from the API."""
    import inspect

    import click

    from featx.evaluation.thresholds import parse_threshold
    from featx.studies.robustness import parse_severities
    from featx.studies.spec import StudySpec

    read = {"threshold": parse_threshold, "splits": lambda text: tuple(text.split(",")), "severities": lambda text: tuple(parse_severities(text))}
    compared = 0
    for name, function in {"extract": featx.extract, "fit": featx.fit, "shift": featx.shift, "predict": featx.predict,
                           "compare": featx.compare, "robustness": featx.robustness, "export": featx.export,
                           "explain": featx.explain, "finetune": featx.finetune}.items():
        command, declared = main.commands[name], inspect.signature(function).parameters
        for param in command.params:
            own = declared.get(param.name)
            if own is None or own.default is inspect.Parameter.empty:
                continue
            value = param.get_default(click.Context(command))
            assert read.get(param.name, lambda v: v)(value) == own.default, (name, param.name)
            compared += 1
    study = main.commands["study"]
    for param in study.params:
        if param.name in {"backbones", "heads", "finetune", "repeats", "eval_split", "val_fraction", "group_pattern",
                          "weights", "threshold", "seed", "n_boot", "train_sizes", "finetune_sizes"}:
            value = param.get_default(click.Context(study))
            assert StudySpec(data="d", **{param.name: value}) == StudySpec(data="d"), param.name
            compared += 1
    assert compared > 60
