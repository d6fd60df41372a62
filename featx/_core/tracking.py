"""Runs logged to MLflow (the `track` extra): what a study's units, a fit, a fine-tune or a comparison measured,
as runs a group's MLflow already lists beside its other experiments.

Each run carries the key of what it records (`featx.key`), so logging again logs nothing twice: a study
gathered twice, or resumed, adds only its new units. Without a tracking URI the runs go to a SQLite file in
the folder featx writes into (MLflow 3 no longer writes its plain-folder store), their artifacts beside it
under mlruns/; `mlflow ui --backend-store-uri sqlite:///FOLDER/mlflow.db` shows them.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FeatxError
from .optional import library

TRACKERS = ("mlflow",)
KEY = "featx.key"


@dataclass(frozen=True)
class Tracking:
    """Where runs are logged: MLflow at `uri` (None: sqlite in the folder being written), in `experiment`."""

    experiment: str
    uri: str | None = None
    kind: str = "mlflow"

    def __post_init__(self):
        check_tracking(self.kind, self.uri)

    @classmethod
    def asked(cls, track: str | None, uri: str | None, experiment: str) -> Tracking | None:
        """The tracking a command asks (`track` None: none), its package checked before any work."""
        if check_tracking(track, uri) is None:
            return None
        library("mlflow", "mlflow", "track")
        return cls(experiment, uri, track)

    def where(self, folder: Path) -> str:
        return self.uri or f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def check_tracking(track: str | None, uri: str | None) -> str | None:
    """`track` (None: no tracking), or one line for a tracker featx does not know or a URI without one."""
    if track is None and uri is not None:
        raise FeatxError("--tracking-uri says where runs are tracked: add --track mlflow")
    if track is not None and track not in TRACKERS:
        raise FeatxError(f"--track must be {', '.join(TRACKERS)}, not {track!r}")
    return track


@dataclass(frozen=True)
class Run:
    """One run: `key` names what it records (logged once); `history`: a metric's value at each step (epochs)."""

    key: str
    name: str
    params: dict
    metrics: dict
    artifacts: tuple = ()
    tags: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)


def log_runs(tracking: Tracking, folder: Path, runs: list[Run]) -> int:
    """Log every run of `runs` not logged before into the experiment (made when new); how many were logged."""
    library("mlflow", "mlflow", "track")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    with _quiet():
        client = MlflowClient(tracking_uri=tracking.where(folder))
        experiment = _experiment(client, tracking, folder)
        logged = 0
        for run in runs:
            if client.search_runs([experiment], filter_string=f"tags.`{KEY}` = '{run.key}'", max_results=1):
                continue
            started = client.create_run(experiment, run_name=run.name, tags={KEY: run.key, **_text(run.tags)})
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, 0) for k, v in run.metrics.items() if _number(v)]
            metrics += [Metric(k, float(v), now, step) for k, values in run.history.items()
                        for step, v in enumerate(values) if _number(v)]
            params = [Param(k, str(v)[:6000]) for k, v in run.params.items() if v is not None]
            client.log_batch(started.info.run_id, metrics=metrics, params=params, tags=[RunTag("featx", "1")])
            for path in run.artifacts:
                if Path(path).is_file():
                    client.log_artifact(started.info.run_id, str(path))
            client.set_terminated(started.info.run_id)
            logged += 1
    return logged


def _experiment(client, tracking: Tracking, folder: Path) -> str:
    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return found.experiment_id
    location = None if tracking.uri else (Path(folder).resolve() / "mlruns").as_uri()
    return client.create_experiment(tracking.experiment, artifact_location=location)


@contextmanager
def _quiet():
    """MLflow's and its database migrations' INFO lines off while logging."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(tags: dict) -> dict:
    return {k: str(v) for k, v in tags.items() if v is not None}
