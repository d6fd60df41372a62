"""Where a study's units run: in this process, in N local processes, as a Slurm job array (submitit) or as
Ray tasks. featx hands its units to these libraries and does not schedule them itself.

An executor runs jobs (studies.study.UnitJob: a few unit numbers, each saved atomically by the job under the
study folder) and returns one Outcome per unit: done, with where and how long, or failed, with one line of
why and the log to read. A failed or killed unit leaves no record, so a re-run of the study submits it, and
only it, again. Everything here is picklable by path and number, never by the plan itself: every job reads
the study file written into the study folder, which is why that folder must be one the workers can see.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from .._core.errors import FeatxError
from .._core.optional import library

EXECUTORS = ("local", "slurm", "ray")
CLUSTERS = ("slurm", "local", "debug")  # submitit's backends: local and debug run the same job array here
LOCAL_ONLY = ("/tmp", "/var/tmp", "/dev/shm")  # node-local on every cluster we know


@dataclass(frozen=True)
class Resources:
    """What each job asks of the cluster (a study file's [resources] table; the options --slurm-*, --cpus-per-task,
    --gpus-per-task, ...). `cluster`: submitit's backend for --executor slurm (local and debug run the same job
    array on this machine, to try a study file before the cluster)."""

    partition: str | None = None
    time_min: int = 60            # each job's time limit: Slurm kills (pre-empts) a job past it
    cpus: int | None = None       # per job; the job's threads (None: the machine's cores over --jobs)
    gpus: int = 0                 # per job
    mem_gb: float | None = None
    array_parallelism: int | None = None  # Slurm array tasks at once (None: Slurm's own limit)
    units_per_task: int = 1       # units one job runs in turn: fewer job starts for many small head fits
    cluster: str = "slurm"
    # each backbone not yet extracted as one Slurm job of this many tasks (more than one: sharded as under
    # torchrun); 0: in the submitting process
    extract_tasks: int = 0

    def __post_init__(self):
        for name, low in (("time_min", 1), ("cpus", 1), ("gpus", 0), ("array_parallelism", 1), ("units_per_task", 1),
                          ("extract_tasks", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise FeatxError(f"resources.{name} must be a whole number of at least {low}, not {value!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or self.mem_gb <= 0):
            raise FeatxError(f"resources.mem_gb must be a positive number of GB, not {self.mem_gb!r}")
        if self.cluster not in CLUSTERS:
            raise FeatxError(f"resources.cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")

    @classmethod
    def of(cls, value) -> Resources:
        """From a Resources, a table (a study file's, the API's) or None; an unknown key is refused in one line."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise FeatxError(f"resources must be a table of {', '.join(RESOURCE_KEYS)}, not {value!r}")
        unknown = sorted(set(value) - set(RESOURCE_KEYS))
        if unknown:
            raise FeatxError(f"unknown resource key {unknown[0]!r}; the keys are {', '.join(RESOURCE_KEYS)}")
        return cls(**value)

    def given(self) -> dict:
        """The keys set away from their defaults (what a study file writes back)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


RESOURCE_KEYS = tuple(f.name for f in fields(Resources))


@dataclass(frozen=True)
class Outcome:
    """One unit as its executor saw it: done (with the worker's host, its own seconds and the times it was
    handed over and began) or failed (`error`: one line; `log`: the file to read)."""

    unit: int
    done: bool
    host: str = ""
    seconds: float = 0.0       # the unit's own work
    setup: float = 0.0         # the job's reading of the study (its plan) before its first unit, once per process
    submitted: float = 0.0     # wall clock (time.time) when handed to the executor
    started: float = 0.0       # ... when the job began in its worker
    finished: float = 0.0      # ... when the submitter had its result
    error: str = ""
    log: str = ""


def check_executor(executor: str, jobs: int, resources: Resources, address: str | None) -> None:
    """The executor's name and its options, checked before any work (its package is checked when it runs)."""
    if executor not in EXECUTORS:
        raise FeatxError(f"--executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise FeatxError(f"--jobs must be a whole number of at least 1, not {jobs!r}")
    if jobs > 1 and executor != "local":
        raise FeatxError(f"--jobs sets local worker processes; {executor} runs as many at once as its cluster gives "
                         "(for Slurm: --array-parallelism)")
    if address is not None and executor != "ray":
        raise FeatxError("--ray-address names a Ray cluster: add --executor ray")
    if resources.extract_tasks and executor != "slurm":
        raise FeatxError("--extract-tasks runs each extraction as one Slurm job of N tasks: add --executor slurm")


def check_available(executor: str, resources: Resources):
    """The executor's library (None for local), or one line: the extra that installs it, or no sbatch here."""
    if executor == "local":
        return None
    name = {"slurm": "submitit", "ray": "ray"}[executor]
    module = library(name, name, executor)  # the extra is named after the executor
    if executor == "slurm" and resources.cluster == "slurm" and shutil.which("sbatch") is None:
        raise FeatxError("--executor slurm submits with sbatch, which is not on this machine's PATH: run featx on "
                         "the cluster's login node (or try the job array here with --slurm-cluster local)")
    return module


def check_shared(executor: str, resources: Resources, *folders: Path) -> None:
    """Refuse a study folder or cache on a node-local path where jobs run on other machines."""
    if executor != "slurm" or resources.cluster != "slurm":
        return
    for folder in folders:
        where = str(Path(folder).resolve())
        if any(where == p or where.startswith(p + "/") for p in LOCAL_ONLY):
            raise FeatxError(f"{folder} is on a node-local path ({where}): the cluster's nodes cannot see it; put "
                             "the study folder (--out) and the cache (--cache) on a filesystem they share")


def run_jobs(jobs: list, executor: str, n_jobs: int, resources: Resources, address: str | None, folder: Path,
             tell: Callable[[Outcome], None], tasks: int = 1) -> list[Outcome]:
    """Run `jobs` (callables, each with `.units` and `.threads`, returning its units' Outcomes) on `executor`;
    `tell` hears each unit as it ends. Jobs that failed whole (killed, pre-empted, not started) come back as
    failed Outcomes.
    `tasks` > 1 (Slurm): each job runs as that many tasks of one torch.distributed group; task 0 reports."""
    if tasks > 1:
        return _submitit(jobs, n_jobs, resources, address, folder, tell, tasks)
    run = {"local": _local, "slurm": _submitit, "ray": _ray}[executor]
    return run(jobs, n_jobs, resources, address, folder, tell)


def _failed(job, error: str, submitted: float, tell, log: str = "") -> list[Outcome]:
    """Every unit of a job that failed whole, told."""
    return _told([Outcome(k, False, error=error, log=log) for k in job.units], submitted, tell)


def _told(outcomes: list[Outcome], submitted: float, tell) -> list[Outcome]:
    """`outcomes` with the times the submitter handed them over and had them, each told as it ends."""
    now = time.time()
    outcomes = [replace(o, submitted=submitted, finished=now) for o in outcomes]
    for o in outcomes:
        tell(o)
    return outcomes


# -- local: N processes on this machine ------------------------------------------------------------------
def _local(jobs, n_jobs, resources, address, folder, tell) -> list[Outcome]:
    threads = jobs[0].threads if jobs else None  # each process's, set before its libraries load
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or OpenMP state
    outcomes: list[Outcome] = []
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=set_threads,
                             initargs=(threads,)) as pool:
        submitted = time.time()
        futures = {pool.submit(job): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcomes += _told(future.result(), submitted, tell)
            except BrokenProcessPool:
                outcomes += _failed(futures[future], "not finished: a worker process died (killed, or out of "
                                    "memory), which stops every local process", submitted, tell)
            except Exception as exc:  # noqa: BLE001 - reported per unit, the others go on
                outcomes += _failed(futures[future], one_line(exc), submitted, tell)
    return outcomes


def set_threads(threads: int | None) -> None:
    """The threads a job's libraries use: by variable for those not loaded yet (OpenMP reads it once), by
    threadpoolctl and torch for those loaded."""
    if not threads:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)


# -- slurm (and submitit's local and debug backends) ------------------------------------------------------
def _submitit(jobs, n_jobs, resources: Resources, address, folder: Path, tell, tasks: int = 1) -> list[Outcome]:
    submitit = check_available("slurm", resources)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=resources.cluster)
    parameters = {"timeout_min": resources.time_min, "gpus_per_node": resources.gpus * tasks, "name": "featx-study",
                  "tasks_per_node": tasks if tasks > 1 else None,
                  "slurm_partition": resources.partition, "cpus_per_task": resources.cpus, "mem_gb": resources.mem_gb,
                  "slurm_array_parallelism": resources.array_parallelism}
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    submitted = time.time()
    if resources.cluster == "local":  # submitit's local backend starts every job at once: keep a few running
        return _windowed(executor, jobs, local_parallelism(resources), submitted, tell, tasks)
    handles = executor.map_array(call, jobs)
    return [o for job, handle in zip(jobs, handles) for o in _collect(job, handle, submitted, tell, tasks)]


def local_parallelism(resources: Resources) -> int:
    """Jobs at once where submitit runs them on this machine: --array-parallelism, else its cores."""
    return resources.array_parallelism or os.cpu_count() or 1


def _windowed(executor, jobs, n_jobs: int, submitted: float, tell, tasks: int) -> list[Outcome]:
    waiting, running, outcomes = list(jobs), [], []
    while waiting or running:
        while waiting and len(running) < n_jobs:
            job = waiting.pop(0)
            running.append((job, executor.submit(call, job), time.time()))
        finished = [entry for entry in running if entry[1].done()]
        for entry in finished:
            running.remove(entry)
            outcomes += _collect(entry[0], entry[1], entry[2], tell, tasks)
        if not finished:
            time.sleep(0.1)
    return outcomes


def _collect(job, handle, submitted: float, tell, tasks: int = 1) -> list[Outcome]:
    """A submitit job's outcomes (task 0's, of a job of several tasks), or its units failed with one line of why
    and its log."""
    try:
        return _told(handle.results()[0] if tasks > 1 else handle.result(), submitted, tell)
    except Exception as exc:  # noqa: BLE001 - FailedJobError, UncompletedJobError (pre-empted, timed out, lost)
        log = str(getattr(getattr(handle, "paths", None), "stderr", "") or "")
        if type(exc).__name__ == "UncompletedJobError":
            state = _state(handle)  # Slurm's TIMEOUT, PREEMPTED, OUT_OF_MEMORY, ...; submitit's local says FINISHED
            shown = "" if state in ("FINISHED", "UNKNOWN", "unknown") else f" ({state})"
            why = (f"its job {handle.job_id} ended without a result{shown}: killed, pre-empted, past its --time or "
                   "out of memory")
        else:  # the job's own error, outside its units (e.g. featx not importable where it ran): its last line
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = f"its job {handle.job_id} failed: {lines[-1] if lines else type(exc).__name__}"
        return _failed(job, why, submitted, tell, log)


def _state(handle) -> str:
    try:
        return str(handle.state)
    except Exception:  # noqa: BLE001 - a state Slurm no longer knows
        return "unknown"


def call(job):
    """A job, called in its worker (a module-level function: what submitit and Ray pickle by name)."""
    return job()


# -- ray ---------------------------------------------------------------------------------------------------
def _ray(jobs, n_jobs, resources: Resources, address, folder, tell) -> list[Outcome]:
    ray = check_available("ray", resources)
    started_here = not ray.is_initialized()
    if started_here:  # a cluster's address, or a Ray of this machine's cores started now and stopped after
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=resources.cpus or 1, num_gpus=resources.gpus)(call)
        submitted = time.time()
        pending = {remote.remote(job): job for job in jobs}
        outcomes = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcomes += _told(ray.get(ready[0]), submitted, tell)
            except Exception as exc:  # noqa: BLE001 - RayTaskError (the job's own), WorkerCrashedError, ...
                outcomes += _failed(job, one_line(getattr(exc, "cause", None) or exc), submitted, tell)
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def one_line(exc: BaseException) -> str:
    """An error as one line: a featx error's own sentence, else its type and first line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, FeatxError) else f"{type(exc).__name__}: {first}".rstrip(": ")
