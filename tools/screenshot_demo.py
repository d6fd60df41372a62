"""Open `featx demo` in headless Chromium, predict one image, save a screenshot and check the network log.

    python tools/screenshot_demo.py --model M [--model M2] --image XRAY.jpeg --out demo.png

Needs the Debian package `chromium` and `pip install playwright` (its Python driver only: the
browser is Debian's). Every request the page makes while it loads and predicts is recorded; any
request to a host other than 127.0.0.1 is printed and makes the script fail.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from urllib.parse import urlparse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", default="demo.png")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from featx.demo.app import launch

    page_app, url = launch(args.model, port=args.port, block=False)
    requests = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="networkidle")
            page.locator("input[type=file]").first.set_input_files(args.image)
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Predict", exact=True).click()
            page.get_by_text("Evidence for").last.wait_for(timeout=120_000)  # every model has answered
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        page_app.close()
    foreign = [u for u in requests if urlparse(u).hostname not in ("127.0.0.1", "localhost") and
               not u.startswith(("data:", "blob:"))]
    print(f"{args.out}: {len(requests)} requests, {len(foreign)} to other hosts")
    if foreign:
        print("\n".join(foreign))
        sys.exit(1)


if __name__ == "__main__":
    main()
