"""Debian's Chromium for browser tests, installed by the test setup when missing (as root), and a
Playwright browser launched on it: headless, no sandbox (root), nothing fetched from the network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this closed
# network refuses; none of that is needed to render pages from 127.0.0.1.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def install_chromium() -> Path:
    """The Chromium binary, installing Debian's `chromium` package first when it is missing (root only)."""
    found = CHROMIUM if CHROMIUM.is_file() else (Path(p) if (p := shutil.which("chromium")) else None)
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(
            "browser tests need Chromium: `sudo apt-get install -y --no-install-recommends chromium`, "
            "or run the tests as root so the test setup installs it"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if not CHROMIUM.is_file():
        raise RuntimeError(f"installed Debian's chromium, but {CHROMIUM} is not there")
    return CHROMIUM
