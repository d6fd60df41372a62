"""featx study's executors and tracking: local worker processes, submitit's job array (its local and debug
backends) and Ray tasks save the very records a sequential study saves; a failed unit is listed, and a re-run
submits it alone; --gather names what is missing; MLflow gets one run per unit, once. No test needs a cluster;
each executor's test is skipped without its package."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.studies.study import UnitJob

from conftest import TINY, final_error, one_line_error
from test_study import data  # noqa: F401 - the study tests' small dataset, a fixture

ARGS = ["--backbones", TINY, "--weights", "random", "--workers", "0", "--bootstrap", "100", "--heads",
        "logreg,lightgbm", "--train-sizes", "16,all", "--repeats", "2"]


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def rows_of(folder):
    """study.csv without the timings, which differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "images_per_second")}
            for r in csv.DictReader(open(folder / "study.csv"))]


@pytest.fixture
def sequential(data, tmp_path):
    """The study run in this process: what every executor must save."""
    out = tmp_path / "sequential"
    done = run("study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache")
    assert done.exit_code == 0, done.output
    return out


def units_sent(output: str) -> int:
    line = next(line for line in output.splitlines() if " to local" in line or " to slurm" in line)
    return int(line.split()[0])


@pytest.mark.slow
def test_local_processes_save_what_one_process_saves_and_a_failed_unit_is_resubmitted_alone(data, tmp_path,
                                                                                          sequential):
    out = tmp_path / "parallel"
    blocked = sorted(p.name for p in (sequential / "units").iterdir())[0]
    (out / "units" / blocked).mkdir(parents=True)  # this unit cannot save its record: it fails, the others go on
    first = run("study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache", "--executor", "local",
                "--jobs", "2")
    assert first.exit_code == 1 and "1 of 6 units failed" in final_error(first), first.output
    assert "FAILED" in first.output and first.output.count(" done on ") == 5
    assert len(list((out / "units").glob("*.json"))) == 6  # five records, and the folder in the way
    (out / "units" / blocked).rmdir()
    again = run("study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache", "--executor", "local",
                "--jobs", "2")
    assert again.exit_code == 0, again.output
    assert units_sent(again.output) == 1 and "1 of 6 units computed now" in again.output
    assert rows_of(out) == rows_of(sequential)  # every metric equal, whichever process ran which unit
    outcomes = json.loads(next((out / "jobs" / "local").glob("outcomes-*.json")).read_text())
    assert {o["unit"] for o in outcomes} <= set(range(1, 7)) and all(o["seconds"] > 0 for o in outcomes if o["done"])


@pytest.mark.parametrize("cluster", ["debug", pytest.param("local", marks=pytest.mark.slow)])
def test_submitit_job_arrays_save_what_one_process_saves(data, tmp_path, sequential, cluster):
    pytest.importorskip("submitit")
    out = tmp_path / cluster
    done = run("study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache", "--executor", "slurm",
               "--slurm-cluster", cluster, "--array-parallelism", "2", "--units-per-task", "4")
    assert done.exit_code == 0, done.output
    assert "6 units to slurm as 2 jobs" in done.output
    assert rows_of(out) == rows_of(sequential)
    assert (out / "study.toml").read_text().count("units_per_task = 4") == 1  # the re-run's file keeps them
    rerun = run("study", "--config", out / "study.toml", "--out", out, "--cache", tmp_path / "cache")
    assert rerun.exit_code == 0 and "0 of 6 units computed now" in rerun.output, rerun.output


@pytest.mark.slow
def test_an_extraction_sharded_over_a_jobs_tasks_gives_the_same_study(data, tmp_path, sequential):
    """--extract-tasks 2: the backbone extracted by one job of two tasks (torchrun's shards, merged by task 0),
    on a cache of its own; the study's records equal the sequential one's."""
    pytest.importorskip("submitit")
    out = tmp_path / "sharded"
    done = run("study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "fresh-cache", "--executor",
               "slurm", "--slurm-cluster", "local", "--extract-tasks", "2", "--units-per-task", "3")
    assert done.exit_code == 0, done.output
    assert "1 unit to slurm (2 tasks each)" in done.output and "all 40 images already cached" in done.output
    assert "2 ranks" in "".join(p.read_text() for p in (out / "jobs" / "slurm").glob("*/*_0_log.err"))
    assert rows_of(out) == rows_of(sequential)


@pytest.mark.slow
def test_ray_tasks_save_what_one_process_saves(data, tmp_path, sequential):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = featx.study(data, backbones=[TINY], heads=["logreg", "lightgbm"], train_sizes=[16, "all"], repeats=2,
                             weights="random", out=tmp_path / "ray", workers=0, n_boot=100, cache_dir=tmp_path / "cache",
                             executor="ray", log=lambda m: None)
    finally:
        ray.shutdown()
    assert result.complete and rows_of(tmp_path / "ray") == rows_of(sequential)


def test_gather_names_the_units_not_in(data, tmp_path):
    out = tmp_path / "study"
    args = ["study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache"]
    assert run(*args, "--unit", "0").exit_code == 0 and run(*args, "--unit", "1").exit_code == 0
    partial = run(*args, "--gather")
    assert partial.exit_code == 1 and "5 units are not in yet" in final_error(partial)
    assert "gathered 1 unit; 5 not in: unit 2 (fit" in partial.output and "logreg" in partial.output
    assert not (out / "study.csv").exists()  # a table of some repeats is not the study's
    assert run(*args).exit_code == 0
    whole = run(*args, "--gather")
    assert whole.exit_code == 0 and "0 of 6 units computed now" in whole.output


def test_a_worker_that_cannot_see_the_study_folder_says_so(tmp_path):
    job = UnitJob(str(tmp_path / "elsewhere" / "study.toml"), "0" * 16, str(tmp_path), (3, 4))
    outcomes = job()
    assert [o.unit for o in outcomes] == [3, 4] and not any(o.done for o in outcomes)
    assert "cannot see" in outcomes[0].error and "filesystem every worker shares" in outcomes[0].error


def test_bad_executor_options_are_one_line(data, tmp_path, monkeypatch):
    base = ["study", "--data", data, *ARGS, "--out", tmp_path / "s", "--cache", tmp_path / "cache"]
    assert "--jobs sets local worker processes" in one_line_error(run(*base, "--executor", "ray", "--jobs", "2"))
    assert "add --executor ray" in one_line_error(run(*base, "--ray-address", "ray://head:10001"))
    assert "add --executor slurm" in one_line_error(run(*base, "--extract-tasks", "2"))
    assert "give one of them" in one_line_error(run(*base, "--gather", "--unit", "1"))
    assert "--jobs must be a whole number" in one_line_error(run(*base, "--jobs", "0"))
    assert "add --track mlflow" in one_line_error(run(*base, "--tracking-uri", "sqlite:///x.db"))
    study = tmp_path / "study.toml"
    study.write_text(f'data = "{data}"\nbackbones = ["{TINY}"]\n\n[resources]\npartitoin = "gpu"\n')
    assert "unknown resource key 'partitoin'" in one_line_error(run("study", "--config", study, "--dry-run"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    no_sbatch = run(*base, "--executor", "slurm")
    if "submitit" in sys.modules or _installed("submitit"):
        assert "sbatch, which is not on this machine's PATH" in one_line_error(no_sbatch)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    assert "pip install 'featx[slurm]'" in one_line_error(run(*base, "--executor", "slurm"))
    monkeypatch.setitem(sys.modules, "ray", None)
    assert "pip install 'featx[ray]'" in one_line_error(run(*base, "--executor", "ray"))
    assert not (tmp_path / "s").exists()  # refused before any work


def test_slurm_refuses_a_node_local_study_folder(data, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_ / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    refused = run("study", "--data", data, *ARGS, "--out", "/tmp/featx-study-here", "--cache", tmp_path / "cache",
                  "--executor", "slurm")
    assert "node-local path" in one_line_error(refused) and "filesystem they share" in one_line_error(refused)


def test_mlflow_gets_one_run_per_unit_once(data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "study"
    args = ["study", "--data", data, *ARGS, "--out", out, "--cache", tmp_path / "cache", "--track", "mlflow"]
    first = run(*args)
    assert first.exit_code == 0 and "tracked: 6 units logged now" in first.output, first.output
    assert "tracked: 0 units logged now" in run(*args).output  # a re-run logs nothing twice
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"featx study {tmp_path.name}/study")
    runs = client.search_runs([experiment.experiment_id])
    units = [r for r in runs if r.data.tags.get("featx.kind") == "fit"]
    assert len(units) == 6 and len(runs) == 7  # and the study's own run, with its table and report
    rows = {(r["method"], r["n"], r["repeat"]): r for r in csv.DictReader(open(out / "study.csv"))}
    for r in units:
        p, m = r.data.params, r.data.metrics
        assert {"method", "n", "repeat", "strategy", "unit_key", "chosen"} <= set(p) and p["strategy"] == "random"
        saved = rows[(p["method"], p["n"], p["repeat"])]
        assert m["roc_auc"] == pytest.approx(float(saved["roc_auc"])) and "roc_auc_low" in m and "train_seconds" in m
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == [f"{p['unit_key']}.json"]
    study_run = next(r for r in runs if r.data.tags.get("featx.kind") == "study")
    assert {"study.csv", "learning_curves.png", "report.html"} <= {a.path for a in client.list_artifacts(
        study_run.info.run_id)}


def test_fit_logs_its_heads_to_mlflow(data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    models = tmp_path / "models"
    done = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--cache", tmp_path / "cache",
               "--models", models, "--track", "mlflow")
    assert done.exit_code == 0 and "tracked: 1 run logged now" in done.output, done.output
    client = MlflowClient(tracking_uri=f"sqlite:///{models / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("featx fit").experiment_id])
    assert logged.data.params["head"] == "logreg" and "test_roc_auc_low" in logged.data.metrics
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {
        p.name for p in models.glob("*.skops")}


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None
