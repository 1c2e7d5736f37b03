"""The README's picture, taken from `make demo`'s own report: the top of runs/demo/report.html in
headless chromium (Debian's; `apt-get install chromium`), 1200 px wide.

    make demo && .venv/bin/python scripts/readme_picture.py runs/demo docs/img/report.png
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(run_dir: str, out: str, height: int = 1500) -> None:
    from playwright.sync_api import sync_playwright

    report = Path(run_dir) / "report.html"
    if not report.is_file():
        sys.exit(f"{report} does not exist: run `make demo` first")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": height})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": 1200, "height": height})
        browser.close()
    print(f"{out}: the top {height} px of {report}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: readme_picture.py RUN_DIR OUT.png")
    main(sys.argv[1], sys.argv[2])
