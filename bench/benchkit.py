"""What the benches that drive the `lorafleet` command share: the command, a scratch home, a training run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lorafleet.home import lorafleet_home


def lorafleet_command() -> list[str]:
    """The `lorafleet` command of this interpreter's environment (or `python -m lorafleet`)."""
    exe = Path(sys.executable).with_name("lorafleet")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lorafleet"]


def scratch_home(work: Path) -> Path:
    """A fresh $LORAFLEET_HOME under `work`, set for this process and its children, with the converted
    models copied from the current one (so the bundled model is not converted again)."""
    home = work / "home"
    models = lorafleet_home() / "models"
    if models.is_dir():
        shutil.copytree(models, home / "models")
    os.environ["LORAFLEET_HOME"] = str(home)
    return home


def train_recipe(recipe: Path, name: str, work: Path, **sections: dict[str, Any]) -> Path:
    """Train `recipe` with `sections` merged into its sections, without scoring, as adapter `name` of the
    scratch home (`lorafleet train` in its own process); the adapter's directory."""
    config = yaml.safe_load(recipe.read_text())
    for section, fields in sections.items():
        config.setdefault(section, {}).update(fields)
    config["eval"] = {"metric": "none"}
    config["output"] = {"name": name, "run_dir": str(work / "runs" / name)}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([*lorafleet_command(), "train", str(path), "--overwrite", "--no-progress"], check=True)
    return lorafleet_home() / "adapters" / name
