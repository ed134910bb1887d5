"""Dashboard pages under a big registry: render time per page on SQLite and PostgreSQL, beside the API's
JSON for the same data (the peer: what the HTML costs over the route functions the page reads through).

Setup, per database: a registry (a SQLite file; a throwaway PostgreSQL cluster from Debian's packages,
as the tests start one) with one tenant holding `--adapters` adapters and `--versions` versions in all
(one adapter holds a tenth of them, so its pages are paged; the rest are spread evenly), a production
alias and two alias moves per adapter, `--jobs` jobs (the newest with `--events` loss points), 100
files, and a second tenant with the same again on a smaller scale, rows inserted in bulk. Then `lorafleet
serve --no-models --workers 0` on that database as a subprocess on 127.0.0.1, signed in through the
form like a browser.

Measure: each page `--requests` times in turn after 3 warm-up calls, one client, a fresh connection
per request: the time to the last byte. p50 and p95 per page; the goal is p95 ≤ 300 ms on every page.
The API column is the same data as JSON (`/v1/...`) measured the same way.

Run: `.venv/bin/python bench/ui_pages.py` (about 3 minutes on 2 cores). Prints a table per database
and writes `bench/results/ui_pages.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' PostgreSQL and server helpers
from tests.support.postgres import fresh_database, install_postgres, temporary_postgres
from tests.support.server import free_port, run_server_process

from lorafleet.registry import Registry
from lorafleet.registry.tables import (
    Adapter,
    AdapterVersion,
    Alias,
    AliasMove,
    Dataset,
    Job,
    JobEvent,
    new_id,
)

GOAL_P95_MS = 300.0
ADMIN_KEY = "bench-admin-key-0123456789"
RESULTS = Path(__file__).parent / "results" / "ui_pages.json"


def seed(
    registry: Registry, tenant_id: str, *, adapters: int, versions: int, jobs: int, events: int
) -> dict[str, str]:
    """Bulk rows for one tenant; the names and ids the measured pages open."""
    clock = time.time() - 86_400
    big = versions // 10
    counts = [big] + [(versions - big) // (adapters - 1)] * (adapters - 1)
    counts[-1] += versions - sum(counts)
    adapter_rows, version_rows, alias_rows, move_rows = [], [], [], []
    for index, count in enumerate(counts):
        adapter_id = new_id("ad")
        name = f"adapter-{index:05d}"
        adapter_rows.append(
            {
                "id": adapter_id,
                "tenant_id": tenant_id,
                "name": name,
                "latest_version": count,
                "created_at": clock,
            }
        )
        ids = [new_id("av") for _ in range(count)]
        for number, version_id in enumerate(ids, start=1):
            version_rows.append(
                {
                    "id": version_id,
                    "adapter_id": adapter_id,
                    "tenant_id": tenant_id,
                    "number": number,
                    "artifact": f"file:///nowhere/{version_id}",
                    "sha256": "0" * 64,
                    "bytes": 9_600,
                    "base_model": "default",
                    "metrics": {"final_train_loss": 1.0 / number, "steps": 100, "tokens": 12_345},
                    "parent_version_id": ids[number - 2] if number > 1 else None,
                    "created_at": clock + number,
                }
            )
        alias_rows.append(
            {"adapter_id": adapter_id, "tenant_id": tenant_id, "name": "production", "version_id": ids[-1]}
        )
        for source, target in ((None, ids[0]), (ids[0], ids[-1])):
            move_rows.append(
                {
                    "adapter_id": adapter_id,
                    "tenant_id": tenant_id,
                    "alias": "production",
                    "from_version_id": source,
                    "to_version_id": target,
                    "action": "promote",
                    "actor": "admin",
                    "forced": False,
                    "created_at": clock,
                }
            )
    file_rows = [
        {
            "id": new_id("file"),
            "tenant_id": tenant_id,
            "filename": f"rows-{i}.jsonl",
            "purpose": "fine-tune",
            "format": "prompt_completion",
            "bytes": 1000,
            "sha256": "0" * 64,
            "rows": 10,
            "tokens": 100,
            "artifact": "file:///nowhere",
            "created_at": clock + i,
        }
        for i in range(100)
    ]
    job_rows = [
        {
            "id": new_id("ftjob"),
            "tenant_id": tenant_id,
            "adapter_name": "adapter-00000",
            "base_model": "default",
            "dataset_id": file_rows[0]["id"],
            "recipe": {},
            "status": "succeeded",
            "step": events,
            "total_steps": events,
            "metrics": {},
            "created_at": clock + i,
        }
        for i in range(jobs)
    ]
    newest = job_rows[-1]["id"]
    event_rows = [
        {
            "job_id": newest,
            "tenant_id": tenant_id,
            "type": "metrics",
            "message": f"step {s}/{events}",
            "data": {"step": s, "loss": 3.0 / (1 + s / 50)},
            "created_at": clock + s,
        }
        for s in range(1, events + 1)
    ]
    with registry.db.session() as session:
        for table, rows in (
            (Adapter, adapter_rows),
            (AdapterVersion, version_rows),
            (Alias, alias_rows),
            (AliasMove, move_rows),
            (Dataset, file_rows),
            (Job, job_rows),
            (JobEvent, event_rows),
        ):
            for start in range(0, len(rows), 2_000):
                session.execute(insert(table), rows[start : start + 2_000])
    return {
        "big": "adapter-00000",
        "middle": f"adapter-{adapters // 2:05d}",
        "job": newest,
        "deep_after": f"adapter-{adapters - 60:05d}",
        "versions_after": str(big - 40),
    }


def pages(names: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """(label, page, the API route with the same data)."""
    big, middle, job = names["big"], names["middle"], names["job"]
    return [
        ("adapters, first page", "/ui/adapters", "/v1/adapters?limit=50"),
        (
            "adapters, deep page",
            f"/ui/adapters?after={names['deep_after']}",
            f"/v1/adapters?limit=50&after={names['deep_after']}",
        ),
        ("adapter (1,000 versions)", f"/ui/adapters/{big}", f"/v1/adapters/{big}/versions?limit=50"),
        (
            "adapter, versions page",
            f"/ui/adapters/{big}?after={names['versions_after']}",
            f"/v1/adapters/{big}/versions?limit=50&after={names['versions_after']}",
        ),
        ("adapter (10 versions)", f"/ui/adapters/{middle}", f"/v1/adapters/{middle}"),
        (
            "version (lineage of 1,000)",
            f"/ui/adapters/{big}/versions/1000",
            f"/v1/adapters/{big}/versions/1000",
        ),
        ("jobs", "/ui/jobs", "/v1/fine_tuning/jobs?limit=50"),
        ("job (loss curve)", f"/ui/jobs/{job}", f"/v1/fine_tuning/jobs/{job}/events?limit=1000"),
        ("files", "/ui/files", "/v1/files?limit=50"),
        ("usage", "/ui/usage", "/v1/usage"),
        ("monitors", "/ui/monitors", None),
    ]


def timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    for _ in range(3):
        client.get(path).raise_for_status()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        answer = client.get(path, headers={"Connection": "close"})
        answer.raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'registry.db'}"
    else:
        install_postgres()
        with temporary_postgres(Path(tempfile.gettempdir())) as admin_url:
            yield fresh_database(admin_url, "bench_ui")


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"lorafleet-ui-{kind}-") as tmp, database(kind, Path(tmp)) as url:
        registry = Registry(url, artifacts_url=str(Path(tmp) / "artifacts"))
        tenant = registry.tenants.create("bench")
        _, key = registry.tenants.create_key(tenant.id)
        started = time.perf_counter()
        names = seed(
            registry,
            tenant.id,
            adapters=args.adapters,
            versions=args.versions,
            jobs=args.jobs,
            events=args.events,
        )
        other = registry.tenants.create("neighbour")
        seed(
            registry, other.id, adapters=args.adapters // 10, versions=args.versions // 10, jobs=10, events=10
        )
        seeded = time.perf_counter() - started
        registry.close()
        port = free_port()
        env = {
            **os.environ,
            "LORAFLEET_HOME": tmp,
            "LORAFLEET_DATABASE_URL": url,
            "LORAFLEET_ARTIFACTS_URL": str(Path(tmp) / "artifacts"),
        }
        argv = [
            sys.executable,
            "-m",
            "lorafleet",
            "serve",
            "--no-models",
            "--workers",
            "0",
            "--port",
            str(port),
            "--admin-key",
            ADMIN_KEY,
            "--log-level",
            "warning",
        ]
        base = f"http://127.0.0.1:{port}"
        with run_server_process(argv, env=env, ready_url=f"{base}/healthz", timeout=120):
            browser = httpx.Client(base_url=base, timeout=30)
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/ui/login").text)
            assert token is not None
            browser.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1), "next": ""})
            api = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"})
            rows = []
            for label, page, route in pages(names):
                ui = timed(browser, page, args.requests)
                peer = timed(api, route, args.requests) if route else None
                rows.append(
                    {
                        "page": label,
                        "path": page,
                        "ui_p50_ms": statistics.median(ui),
                        "ui_p95_ms": p95(ui),
                        "api_path": route,
                        "api_p50_ms": statistics.median(peer) if peer else None,
                        "api_p95_ms": p95(peer) if peer else None,
                        "ratio_p50": statistics.median(ui) / statistics.median(peer) if peer else None,
                    }
                )
    return {
        "database": kind,
        "seed_seconds": seeded,
        "pages": rows,
        "worst_p95_ms": max(r["ui_p95_ms"] for r in rows),
        "goal_met": all(r["ui_p95_ms"] <= GOAL_P95_MS for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=1_000, help="Adapters of the measured tenant.")
    parser.add_argument(
        "--versions", type=int, default=10_000, help="Versions in all (one adapter holds a tenth)."
    )
    parser.add_argument("--jobs", type=int, default=500, help="Jobs of the tenant.")
    parser.add_argument("--events", type=int, default=2_000, help="Loss points of the newest job.")
    parser.add_argument("--requests", type=int, default=60, help="Timed requests per page.")
    parser.add_argument("--databases", default="sqlite,postgres", help="Comma-separated: sqlite, postgres.")
    args = parser.parse_args()
    console = Console()
    runs = []
    for kind in args.databases.split(","):
        result = run(kind, args)
        runs.append(result)
        table = Table(
            title=f"{kind}: {args.adapters:,} adapters, {args.versions:,} versions "
            f"(seeded in {result['seed_seconds']:.0f} s)"
        )
        for column in ("page", "UI p50 ms", "UI p95 ms", "API p50 ms", "UI / API"):
            table.add_column(column, justify="left" if column == "page" else "right")
        for row in result["pages"]:
            table.add_row(
                row["page"],
                f"{row['ui_p50_ms']:.1f}",
                f"{row['ui_p95_ms']:.1f}",
                f"{row['api_p50_ms']:.1f}" if row["api_p50_ms"] else "—",
                f"{row['ratio_p50']:.2f}" if row["ratio_p50"] else "—",
            )
        console.print(table)
        verdict = "met" if result["goal_met"] else "MISSED"
        console.print(
            f"worst p95 {result['worst_p95_ms']:.1f} ms; goal p95 ≤ {GOAL_P95_MS:.0f} ms: {verdict}"
        )
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": vars(args),
        "goal_p95_ms": GOAL_P95_MS,
        "runs": runs,
        "goal_met": all(r["goal_met"] for r in runs),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
