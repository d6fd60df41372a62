"""`featx demo` on this CPU: start-up to a ready page, and one prediction's latency with and without heatmap.

For each model, in one run: `featx demo --model M` is started as a user starts it and the page is polled
until it answers (start-up, including loading the model and warming up its backbone); then gradio_client
sends the same X-ray --requests times with the heatmap and as many times without, and the medians are
printed, with the ratio heatmap / no heatmap.

    python benchmarks/demo_speed.py --model cache/models/<lite0-logreg>.skops --model runs/lite0/model.pt \\
        --image ../shared/data/chest_xray_fullres/train/PNEUMONIA/<file>.jpeg
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    for model in args.model:
        port = _free_port()
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "featx", "demo", "--model", model, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait(url, server)
            ready = time.perf_counter() - started
            client = Client(url, verbose=False)
            timings = {}
            for heatmap in (True, False):
                seconds = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    client.predict(handle_file(args.image), heatmap, api_name="/predict")
                    seconds.append(time.perf_counter() - t)
                timings[heatmap] = statistics.median(seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(f"{model}: ready in {ready:.1f} s; one prediction, median of {args.requests}: with heatmap "
              f"{timings[True]:.2f} s, without {timings[False]:.2f} s (ratio {timings[True] / timings[False]:.2f})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, server, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"featx demo exited ({server.returncode})")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("featx demo did not answer in time")


if __name__ == "__main__":
    main()
