"""Export jobs through a real server: queued with their plan checked, run by a worker in its own process,
stored with the version, listed and downloaded; another tenant sees none of it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import save_random_adapter
from tests.support.platform import Platform, Tenant

pytestmark = pytest.mark.integration


def tickets(platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path, **settings: object) -> None:
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    adapter = save_random_adapter(base, tmp_path / "adapter", seed=1, **settings)
    platform.registry.adapters.register(tenant.id, "tickets", adapter, base_model=str(tiny_dir))


def run_queued_export(platform: Platform) -> None:
    from lorafleet.jobs.worker import Worker

    assert Worker(platform.registry).run_export()


def test_an_export_is_queued_run_by_a_worker_stored_and_downloaded(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme, other = platform.tenant("acme"), platform.tenant("other")
    tickets(platform, acme, tiny_dir, tmp_path)
    route = "/v1/adapters/tickets/versions/1/exports"
    queued = acme.client.post(route, json={"format": "gguf", "quant": "f16", "target": "mobile_cpu"})
    assert queued.status_code == 201 and queued.json()["status"] == "queued", queued.text
    export_id = queued.json()["id"]
    early = acme.client.get(f"{route}/{export_id}/download")
    assert early.status_code == 409 and "queued" in early.json()["error"]["message"], early.text

    run_queued_export(platform)

    done = acme.client.get(f"{route}/{export_id}").json()
    assert done["status"] == "succeeded", done
    report = done["report"]
    assert report["target"] == "mobile_cpu" and report["chosen"] == "gguf-f16"  # a tiny model fits
    (kept,) = report["variants"]
    assert kept["max_abs_logit_diff"] <= 1e-2 and kept["checked_tokens"] > 0 and kept["tokens_per_s"] > 0
    assert {v["profile"] for v in report["verdicts"]} >= {"mobile_cpu", "embedded_npu", "raspberry_pi"}
    assert [e["id"] for e in acme.client.get(route).json()["data"]] == [export_id]
    body = acme.client.get(f"{route}/{export_id}/download")
    assert body.status_code == 200, body.text
    with tarfile.open(fileobj=io.BytesIO(body.content), mode="r:gz") as archive:
        names = {Path(n).name: n for n in archive.getnames()}
        manifest = json.loads(archive.extractfile(names["export.json"]).read())  # type: ignore[union-attr]
    assert kept["file"] in names and manifest["chosen"] == "gguf-f16"

    # another tenant: the version, its exports and the files are all "not found"
    for path in (route, f"{route}/{export_id}", f"{route}/{export_id}/download"):
        assert other.client.get(path).status_code == 404, path
    assert other.client.post(route, json={"format": "gguf"}).status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # validation: no database logic
def test_a_bad_plan_is_a_400_naming_the_field_and_queues_nothing(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    tickets(platform, acme, tiny_dir, tmp_path)
    route = "/v1/adapters/tickets/versions/1/exports"
    for body, param in (
        ({"format": "tflite"}, "format"),
        ({"format": "onnx", "quant": "q4_0"}, "quant"),
        ({"format": "gguf", "target": "toaster"}, None),
    ):
        answer = acme.client.post(route, json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    assert (
        acme.client.post("/v1/adapters/tickets/versions/9/exports", json={"format": "gguf"}).status_code
        == 404
    )
    assert acme.client.get(route).json()["data"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the claim is tested on both above
def test_an_export_that_fails_says_why_and_stores_nothing(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    tickets(platform, acme, tiny_dir, tmp_path, use_dora=True)
    route = "/v1/adapters/tickets/versions/1/exports"
    queued = acme.client.post(route, json={"format": "gguf", "quant": "lora"}).json()

    run_queued_export(platform)

    failed = acme.client.get(f"{route}/{queued['id']}").json()
    assert failed["status"] == "failed" and "DoRA" in failed["error"] and "--format gguf" in failed["error"]
    assert "/tmp" not in failed["error"] and failed["bytes"] == 0
    assert acme.client.get(f"{route}/{queued['id']}/download").status_code == 409
