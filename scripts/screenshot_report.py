"""Screenshot the demo report in headless Chromium (does it render in a real browser?).

    python scripts/screenshot_report.py [--report demo_out/report.html] [--output demo_out/report.png] [--width 1280] [--height 0]

``--height 0`` (the default) sizes the window to the whole page: the report's height is read
from the page itself by a first headless run (``--dump-dom`` of a script that writes
``document.body.scrollHeight``), so the PNG shows every section. The browser runs with a new
temporary profile, no network services (``--disable-background-networking`` etc.) and no
sandbox (it usually runs as root in containers). This script installs nothing: when no
Chromium is found it says how to install one and exits 2.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
TIMEOUT_S = 120


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="dhs_chromium_") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def page_height(browser: str, report: Path, width: int) -> int:
    """The rendered height (px) of ``report`` at ``width``: a copy of the page with a script that
    writes ``document.body.scrollHeight`` into the DOM, read back with ``--dump-dom``."""
    probe = report.with_name(f".{report.stem}.height-probe.html")
    script = "<script>window.onload=function(){var d=document.createElement('div');d.id='dhs-height';"
    script += "d.textContent='H'+document.documentElement.scrollHeight+'H';document.body.appendChild(d);}</script>"
    probe.write_text(report.read_text().replace("</body>", script + "</body>", 1))
    try:
        out = _run(browser, [f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()])
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r"id=\"dhs-height\">H(\d+)H", out.stdout)  # anchored: base64 image data holds such patterns too
    if not match:
        raise RuntimeError(f"could not read the page height from Chromium (exit {out.returncode}): {out.stderr[-500:]}")
    return int(match.group(1))


def screenshot(browser: str, report: Path, output: Path, width: int, height: int) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    out = _run(browser, [f"--screenshot={output.resolve()}", f"--window-size={width},{height}", "--virtual-time-budget=5000", report.resolve().as_uri()])
    if out.returncode != 0 or not output.exists():
        raise RuntimeError(f"Chromium failed (exit {out.returncode}): {out.stderr[-800:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="demo_out/report.html")
    parser.add_argument("--output", default=None, help="PNG path (default: beside the report, report.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=0, help="window height in px; 0 = the whole page")
    args = parser.parse_args(argv)
    report = Path(args.report)
    if not report.is_file():
        print(f"no report at {report}: run `make demo` first", file=sys.stderr)
        return 2
    browser = find_chromium()
    if browser is None:
        print(
            f"no Chromium found (looked for {', '.join(CANDIDATES)} on PATH). Install one, e.g. on Debian/Ubuntu as root: "
            "`apt-get update && apt-get install -y chromium`; on macOS: `brew install --cask chromium`.",
            file=sys.stderr,
        )
        return 2
    output = Path(args.output) if args.output else report.with_suffix(".png")
    height = args.height or page_height(browser, report, args.width) + 40
    screenshot(browser, report, output, args.width, height)
    print(f"{output} ({args.width} x {height} px, {browser})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
