"""Deployment: `lorafleet fl server` and two `lorafleet fl client` processes on 127.0.0.1 (Flower's SuperLink
and SuperNodes) train the tiny model's adapter, in the clear or through SecAgg+, and the server registers
it as a federated version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.support.server import free_port

LORAFLEET = [sys.executable, "-c", "from lorafleet.cli.app import main; main()"]


@pytest.mark.integration
@pytest.mark.parametrize("secure", ["", ", secure_aggregation: {threshold: 0.6}"], ids=["plain", "secagg"])
def test_a_server_and_two_client_processes_register_a_federated_version(
    tiny_dir: Path, split: Path, tmp_path: Path, lorafleet_home: Path, secure: str
) -> None:
    registry = Registry()
    registry.tenants.create("acme")
    registry.close()
    recipe = tmp_path / "fed.yaml"
    recipe.write_text(
        f"model: {{name: {tiny_dir}}}\n"
        f"data: {{path: unused.jsonl, validation_path: {split / 'test.jsonl'}, max_length: 512}}\n"
        "lora: {r: 4, target_modules: [q_proj, v_proj]}\n"
        "training: {batch_size: 4, learning_rate: 1.0e-2}\n"
        f"federated: {{clients: 2, rounds: 2, fraction: 1.0, local_steps: 2, validation_rows: 4{secure}}}\n"
        f"output: {{name: fed-deployed, run_dir: {tmp_path / 'run'}}}\n"
    )
    port = free_port()
    env = {**os.environ, "LORAFLEET_HOME": str(lorafleet_home), "OMP_NUM_THREADS": "1"}
    logs = [(tmp_path / f"client-{k}.log").open("wb") for k in range(2)]
    clients = [
        subprocess.Popen(
            [
                *LORAFLEET,
                "fl",
                "client",
                "--data",
                str(split / f"client-{k:02d}/train.jsonl"),
                "--server",
                f"127.0.0.1:{port}",
                "--port",
                str(free_port()),
                "--name",
                f"site-{k}",
            ],
            env=env,
            stdout=logs[k],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for k in range(2)
    ]
    try:
        server = subprocess.run(
            [
                *LORAFLEET,
                "fl",
                "server",
                str(recipe),
                "--port",
                str(port),
                "--timeout",
                "240",
                "--tenant",
                "acme",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for client in clients:
            os.killpg(client.pid, signal.SIGTERM)
            client.wait(timeout=30)
        for log in logs:
            log.close()
    assert server.returncode == 0, (
        server.stdout + server.stderr + (tmp_path / "client-0.log").read_text()[-3000:]
    )
    assert "2 rounds, 2 clients" in server.stdout
    assert "registered fed-deployed@1 (lineage federated)" in server.stdout
    ledger = [json.loads(line) for line in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    accepted = [sorted(entry["accepted"]) for entry in ledger]
    assert accepted == [["site-0", "site-1"]] * 2  # by --name; under SecAgg+: both completed it
    assert all(entry["applied"] for entry in ledger)

    registry = Registry()
    tenant = registry.tenants.get("acme")
    version = registry.adapters.version(tenant.id, "fed-deployed", 1)
    assert version.metrics["lineage"]["method"] == "federated"
    assert version.metrics["lineage"]["clients"] == 2 and version.metrics["lineage"]["rounds"] == 2
    assert version.metrics["federated"]["bytes_communicated"] > 0
    assert registry.artifacts.local_path(version.artifact).joinpath("adapter_model.safetensors").is_file()
    registry.close()
