"""Running a claimed export job: `lorafleet export` on the stored version, in its own process.

The export process loads the base model and the runtimes (llama.cpp, ONNX Runtime), so it never runs in
the worker's own process: a crash there fails the export, not the worker. Its folder is stored by
`Exports.succeed` (all or nothing) and the scratch space is removed either way. The error a tenant reads
is the command's own one-line message, with server paths hidden (`TenantText`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from lorafleet.jobs.tenant_text import TenantText
from lorafleet.registry import Registry
from lorafleet.registry.tables import AdapterVersion, Export

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 3600  # a 135M model exports in a minute or two on 2 cores; a 7B one takes far longer


def export_command(export: Export, version_dir: Path, output: Path, base_model: str) -> list[str]:
    """The `lorafleet export` command line for `export` of the version stored at `version_dir`."""
    command = [sys.executable, "-m", "lorafleet", "export", str(version_dir), "--format", export.format]
    command += ["--output", str(output), "--model", base_model, "--json"]
    if export.quant:
        command += ["--quant", export.quant]
    if export.target:
        command += ["--target", export.target]
    return command


def run_export(
    registry: Registry, export: Export, version: AdapterVersion, workdir: Path, *, hidden: str
) -> str:
    """Run a claimed export to its end; its final status."""
    folder = workdir / export.id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        version_dir = registry.adapters.local_path(version)
        command = export_command(export, version_dir, folder / "out", version.base_model)
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
        if done.returncode == 0:
            registry.exports.succeed(export.id, folder / "out")
            return "succeeded"
        logger.warning("export %s failed (exit %s):\n%s", export.id, done.returncode, done.stderr[-4000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        message = (
            errors[-1].removeprefix("error: ")
            if errors
            else f"the export process exited with {done.returncode}"
        )
    except subprocess.TimeoutExpired:
        message = f"the export took longer than {TIMEOUT_SECONDS} s and was stopped"
    except Exception as err:  # the store unreachable, say: the export fails, the worker goes on
        logger.exception("export %s failed", export.id)
        message = str(err)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    registry.exports.fail(export.id, TenantText(hidden=(hidden,))(message))
    return "failed"
