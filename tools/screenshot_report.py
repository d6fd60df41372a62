"""Render a featx HTML report in headless Chromium and save a full-page screenshot, to look at it.

    python tools/screenshot_report.py featx-report/report.html report.png [--width 1500] [--height 6000]

Needs the Debian package `chromium` (apt-get install chromium). No network is used: the report
is self-contained, and Chromium runs with background networking off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium")
    page = Path(args.html).resolve()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--hide-scrollbars", f"--window-size={args.width},{args.height}",
           f"--screenshot={Path(args.png).resolve()}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode or not Path(args.png).exists():
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    print(args.png)


if __name__ == "__main__":
    main()
