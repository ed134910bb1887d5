"""Helpers shared by test modules: running the CLI, checking its one-line errors, writing JSONL, counting
what autograd saves."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from click.testing import Result
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from lorafleet.adapters import LoraSettings, attach, save_adapter
from lorafleet.cli.app import app

AdapterFactory = Callable[..., Path]  # save_random_adapter's signature, as the make_adapter fixture


@contextmanager
def saved_for_backward(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """Bytes of the tensors autograd saves for backward inside the block, by storage (each counted once;
    `model`'s parameters left out): `sum(saved.values())` after it."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def invoke(*args: str, input: str | None = None) -> Result:
    """Run `lorafleet ARGS` in-process through Typer's runner."""
    return CliRunner().invoke(app, list(args), prog_name="lorafleet", input=input)


def assert_friendly_error(result: Result, *needles: str) -> str:
    """Exit code 2, `error: ...` in one or two lines on stderr, no traceback; return the message."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert len(message.splitlines()) <= 2, message
    for needle in needles:
        assert needle in message, message
    return message


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` as JSON lines and return `path`."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def save_random_adapter(base: torch.nn.Module, path: Path, seed: int = 0, **settings: object) -> Path:
    """Save a random (B ≠ 0, so it changes outputs) adapter of a copy of `base`: r4 on q,v unless told."""
    torch.manual_seed(seed)
    options: dict[str, object] = {
        "r": 4,
        "alpha": 8.0,
        "target_modules": ["q_proj", "v_proj"],
        "init": "random",
    }
    options.update(settings)
    peft_model = attach(copy.deepcopy(base), LoraSettings(**options))  # type: ignore[arg-type]
    return save_adapter(peft_model, path)


def declared_routes(app: Any, prefix: str) -> set[tuple[str, str]]:
    """(method, path) of every API route of `app` under `prefix`, the included routers' too."""
    try:  # FastAPI ≥ 0.160 keeps included routers as nodes of `app.routes`; this walks them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: `app.routes` is flat
        routes = [route for route in app.routes if isinstance(route, APIRoute)]
    else:
        routes = [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]
    return {
        (method, route.path.replace(":path}", "}"))  # /v1/models/{model:path} is the call /v1/models/{model}
        for route in routes
        if route.path.startswith(prefix)
        for method in route.methods or ()
    }
