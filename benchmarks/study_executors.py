"""One study, run by each executor side by side: the same study.csv, the wall time, and what each executor costs
per unit; then one unit killed while it runs, and the re-run that submits it alone.

    FEATX_WEIGHTS_DIR=DIR python benchmarks/study_executors.py --data ../shared/data/chest_xray \
        --cache CACHE --out OUT [--sizes 25,50,100,250,500 --repeats 3]

Runs, each into its own folder under OUT, on the same feature cache (extracted once, before the first):
sequential (this process), `--executor local --jobs 2`, submitit's local job array (2 at once), Ray tasks on
a local Ray with 2 CPUs (when ray is installed), and submitit's array again with one job killed (SIGKILL) once
a few units are in, then re-run. "Overhead per unit" is what the executor adds, in worker-seconds per unit:
(2 workers x its wall - the sequential wall) / units; "unit s": the units' own seconds, summed; "start" is
the median time from a job's hand-over to its first unit, over the jobs that started a process (the process,
its imports, the study's plan; local processes and Ray workers run many jobs each, a submitit job one).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import featx


def rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "images_per_second")}
            for r in csv.DictReader(open(folder / "study.csv"))]


def outcomes(folder: Path) -> list[dict]:
    found = []
    for path in sorted(folder.glob("jobs/*/outcomes-*.json")):
        found += json.loads(path.read_text())
    return found


def one(name: str, args, out: Path, quiet, **executor) -> dict:
    started = time.perf_counter()
    featx.study(args.data, out=out / name, cache_dir=args.cache, backbones=["efficientnet_lite0"],
                heads=["logreg", "lightgbm"], train_sizes=args.sizes, repeats=args.repeats, workers=0,
                log=quiet, **executor)
    wall = time.perf_counter() - started
    done = [o for o in outcomes(out / name) if o["done"]]
    return {"name": name, "wall": wall, "units": len(done), "unit_seconds": sum(o["seconds"] for o in done),
            # a process's start: hand-over to its first unit (process, imports, the plan), where a process began
            "start": statistics.median([o["started"] - o["submitted"] + o["setup"] for o in done if o["setup"]] or [0])}


def running_job(folder: Path) -> int | None:
    """The pid of a submitit job still computing: its controller (its parent, whose pid is the job's id) has no
    result in the job's folder yet (a finished job's process lingers a moment after writing it)."""
    found = subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True, text=True).stdout.split()
    for pid in map(int, found):
        parent = Path(f"/proc/{pid}/stat").read_text().split()[3] if Path(f"/proc/{pid}/stat").exists() else None
        if parent and not (folder / "jobs" / "slurm" / parent / f"{parent}_0_result.pkl").exists():
            return pid
    return None


def killed(args, out: Path, reference: list[dict]) -> list[str]:
    """submitit's local array with one job SIGKILLed while its unit runs; then the re-run."""
    folder = out / "killed"
    command = [sys.executable, "-m", "featx", "study", "--data", args.data, "--cache", args.cache, "--out", folder,
               "--backbones", "efficientnet_lite0", "--heads", "logreg,lightgbm", "--train-sizes",
               ",".join(map(str, args.sizes)), "--repeats", str(args.repeats), "--workers", "0", "--executor", "slurm",
               "--slurm-cluster", "local", "--array-parallelism", "2"]
    first = subprocess.Popen([str(c) for c in command], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    victim = None
    while victim is None and first.poll() is None:
        time.sleep(0.5)
        if len(list((folder / "units").glob("*.json"))) >= 4:
            victim = running_job(folder)
            if victim:
                os.kill(victim, signal.SIGKILL)
    said = first.communicate()[1].splitlines()
    failed = [line.strip() for line in said if "FAILED" in line]
    again = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    sent = next((line for line in again.stderr.splitlines() if " to slurm as " in line), "nothing submitted")
    return [f"killed pid {victim}; first run exit {first.returncode}; failed: {failed}",
            f"re-run exit {again.returncode}: {sent}",
            f"re-run's study.csv equals the sequential one: {rows(folder) == reference}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sizes", default="25,50,100,250,500")
    parser.add_argument("--repeats", default=3, type=int)
    args = parser.parse_args()
    args.sizes = [int(s) if s.isdigit() else s for s in args.sizes.split(",")]
    quiet = lambda line: None  # noqa: E731
    out = args.out
    # extraction first, outside every timing: each run below reads the same cache
    featx.extract(args.data, "efficientnet_lite0", cache_dir=args.cache, log=quiet)
    runs = [one("sequential", args, out, quiet)]
    runs[0]["units"] = len(rows(out / "sequential"))
    runs.append(one("local-jobs-2", args, out, quiet, executor="local", jobs=2))
    runs.append(one("submitit-local", args, out, quiet, executor="slurm",
                    resources={"cluster": "local", "array_parallelism": 2}))
    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        runs.append(one("ray-2-cpus", args, out, quiet, executor="ray"))
        ray.shutdown()
    except ImportError:
        print("ray not installed: no Ray run")
    reference, n_units = rows(out / "sequential"), runs[0]["units"]
    print(f"{'run':<16} {'wall s':>7} {'x seq':>6} {'units':>5} {'unit s':>7} {'overhead/unit':>13} {'start':>6} "
          f"same study.csv")
    for r in runs:
        workers = 1 if r["name"] == "sequential" else 2
        overhead = (workers * r["wall"] - runs[0]["wall"]) / n_units
        print(f"{r['name']:<16} {r['wall']:>7.1f} {runs[0]['wall'] / r['wall']:>6.2f} {r['units']:>5} "
              f"{r['unit_seconds']:>7.1f} {overhead:>12.2f}s {r['start']:>5.1f}s {rows(out / r['name']) == reference}")
    for line in killed(args, out, reference):
        print(line)


if __name__ == "__main__":
    main()
