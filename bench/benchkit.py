"""What the benches that drive the `lorafleet` command share: the command itself and a scratch home."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def lorafleet_command() -> list[str]:
    """The `lorafleet` command of this interpreter's environment (or `python -m lorafleet`)."""
    exe = Path(sys.executable).with_name("lorafleet")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lorafleet"]


def scratch_home(work: Path) -> Path:
    """A fresh $LORAFLEET_HOME under `work`, set for this process and its children, with the converted
    models copied from the current one (so the bundled model is not converted again)."""
    home = work / "home"
    models = Path(os.environ.get("LORAFLEET_HOME", Path.home() / ".lorafleet")) / "models"
    if models.is_dir():
        shutil.copytree(models, home / "models")
    os.environ["LORAFLEET_HOME"] = str(home)
    return home
