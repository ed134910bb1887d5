"""The job process: run one fine-tuning job from a spec file and report it through an events file.

    python -m lorafleet.jobs.runner SPEC.json

The spec is a JSON object (relative paths in it are relative to the spec file's folder):

    {"config": {...},          a FinetuneConfig mapping (the recipe, as `parse_config` takes it)
     "events": "events.jsonl", where to append events (created if missing)
     "home": "/srv/lorafleet", optional: the LORAFLEET_HOME to train under
     "resume": false,          optional: continue from the run's last checkpoint
     "suites": [...],          optional: held-out suites to score the trained adapter on (below)
     "probe": true}            optional: score it on the general-ability probe too (default true)

Each suite is `{"id": "suite-…", "adapter": "tickets", "metric": "json_fields" | "exact_match" |
"perplexity", "path": "suites/suite-….jsonl"}`. The suites' files are read and checked before training
starts (a bad row fails the job at once); after training the saved adapter is loaded onto the base
again and scored on every suite and on the probe (`lorafleet.evaluation`), and the result's summary
gains, beside the run's own `evaluation.base` / `evaluation.adapter`:

    "evaluation": {"suites": {suite_id: {"adapter", "metric", "score", "details"}},
                   "general": {"perplexity", "base_perplexity", "drift"}}      (absent with "probe": false)

With no suites and "probe": false nothing is scored and `evaluation` is the run's alone. Scoring is
part of the job: if it fails the job fails (no result; the message names the suite), since a version
whose scores are missing could pass a forgetting gate it should not.

The events file is the contract with the worker that tails it (`read_events`): one JSON object per
line, each appended with a single write(); the terminal event is fsynced before the process exits.

    {"type": "started", "pid": int, "host": str, "time": float}
    {"type": "log", "message": str, "time": float}
    {"type": "step", "step": int, "total_steps": int | None, "metrics": {...}, "time": float}
    {"type": "result", "adapter_dir": str, "run_dir": str, "summary": {...}, "time": float}
    {"type": "error", "message": str, "time": float}
    {"type": "cancelled", "message": str, "time": float}

`time` is Unix seconds. The first event is `started`, naming the job process and its host (for the
server log: the worker shows tenants none of it; messages are written for operators). `metrics` is the
training loop's step record without `step` (loss, learning_rate, grad_norm, tokens, ...); a
non-finite number (a NaN loss) is written as null so every line is strict JSON. `total_steps` is
`training.max_steps` when the recipe sets it (early stopping may end sooner), else null. Exactly
one of result / error / cancelled ends a job that was not killed, matching the exit code:

    0  result     the adapter was saved (and scored, see above)
    1  error      training or scoring failed (the traceback is on stderr)
    2  error      the spec, the config or its data (a suite's too) is invalid; retrying will not help
    3  cancelled  SIGTERM or the cancel-request file: a checkpoint was written, `resume` continues from it
                  (none when it came before the training loop started or while scoring: the message says so)

A spec that names no usable events file gets its message on stderr only, and exit code 2; a job
whose parent died before it could ask to die with it exits 1 at once, with no events.
A file `SPEC.json.cancel` appearing beside the spec (`cancel_request_file`) also cancels, at the next
step: that is how the Ray executor asks, since it works wherever the spec's folder is shared.
SIGTERM is turned into KeyboardInterrupt in the main thread, so training takes its own Ctrl-C path
(checkpoint, then `TrainingInterrupted`); further SIGTERMs are ignored while the checkpoint is
written, and one arriving after training returned is ignored. On Linux the process asks to be
SIGKILLed when its parent dies (PR_SET_PDEATHSIG), so a killed worker leaves no orphaned jobs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lorafleet.errors import ConfigError, LorafleetError

if TYPE_CHECKING:  # the job process imports torch only once the spec is checked
    from lorafleet.evaluation.suites import Suite
    from lorafleet.training.config import FinetuneConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_CANCELLED = 3

PARENT_PID_ENV = "LORAFLEET_JOB_PARENT_PID"  # set by the executor: the pid the job must die with
_SPEC_KEYS: dict[str, type] = {
    "config": dict,
    "events": str,
    "home": str,
    "resume": bool,
    "suites": list,
    "probe": bool,
}
_SUITE_KEYS = ("id", "adapter", "metric", "path")
_KIND_NAMES = {dict: "JSON object", str: "string", bool: "boolean", list: "JSON array"}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class BadSpecError(ConfigError):
    """The spec file is unreadable or malformed; the message names the file and the key."""


class EventLog:
    """Appends events to the events file: one JSON line per event, each in a single write()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def emit(self, kind: str, *, durable: bool = False, **fields: Any) -> None:
        """Append `{"type": kind, **fields, "time": now}`; `durable` fsyncs it (for terminal events)."""
        event = {"type": kind, **fields, "time": time.time()}
        data = (json.dumps(_finite(event), default=str, allow_nan=False) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if durable:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_events(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete event lines after byte `offset`, and the offset to read from next time.

    A half-written last line is left for the next call; a missing file reads as no events yet. Lines
    that are not JSON objects (which the runner never writes) are skipped rather than stopping the reader.
    """
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


def run_spec(spec_path: str | os.PathLike[str]) -> int:
    """Run the job described by `spec_path`, appending its events; return the exit code (see above).

    Called by `main` in a job process, and in-process by the Ray executor's task.
    """
    path = Path(spec_path).absolute()
    try:
        spec = _load_spec(path)
        events = EventLog(_resolve(path, spec, "events"))
    except (BadSpecError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_SPEC
    _state.finishing = False
    try:
        events.emit("started", pid=os.getpid(), host=socket.gethostname())
        try:
            _check_spec(path, spec)
            home = _resolve(path, spec, "home") if "home" in spec else None
        except BadSpecError as err:
            events.emit("error", message=str(err), durable=True)
            return EXIT_BAD_SPEC
        with _lorafleet_home(home):
            return _run(path, spec, events, cancel_file=cancel_request_file(path))
    finally:
        events.close()


def _load_spec(path: Path) -> dict[str, Any]:
    """The spec file's JSON object."""
    try:
        spec = json.loads(path.read_text())
    except OSError as err:
        raise BadSpecError(f"{path}: cannot read the job spec ({err.strerror or err})") from err
    except ValueError as err:
        raise BadSpecError(f"{path}: the job spec is not valid JSON ({err})") from err
    if not isinstance(spec, dict):
        raise BadSpecError(f"{path}: a job spec is a JSON object with 'config' and 'events'")
    return spec


def _check_spec(path: Path, spec: dict[str, Any]) -> None:
    """Every key known and of its type (the config inside is checked by `parse_config`)."""
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise BadSpecError(f"{path}: unknown key {unknown[0]!r}; a spec holds {', '.join(_SPEC_KEYS)}")
    for key, kind in _SPEC_KEYS.items():
        if (key in ("config", "events") or key in spec) and not isinstance(spec.get(key), kind):
            raise BadSpecError(f"{path}: '{key}' must be a {_KIND_NAMES[kind]} (got {spec.get(key)!r})")
    for i, suite in enumerate(spec.get("suites", [])):
        where = f"{path}: suites[{i}]"
        if not isinstance(suite, dict) or set(suite) != set(_SUITE_KEYS):
            raise BadSpecError(
                f"{where} must be an object with exactly {', '.join(_SUITE_KEYS)} (got {suite!r})"
            )
        for key in _SUITE_KEYS:
            if not isinstance(suite[key], str) or not suite[key]:
                raise BadSpecError(f"{where}.{key} must be a non-empty string (got {suite[key]!r})")
    ids = [suite["id"] for suite in spec.get("suites", [])]
    if len(set(ids)) != len(ids):
        raise BadSpecError(f"{path}: suites: id {next(i for i in ids if ids.count(i) > 1)!r} appears twice")


def _resolve(path: Path, spec: dict[str, Any], key: str) -> Path:
    """The path under `key`, relative to the spec file's folder."""
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise BadSpecError(f"{path}: '{key}' must be a path (got {value!r})")
    return path.parent / Path(value).expanduser()


def _failed(events: EventLog, err: LorafleetError) -> int:
    """Report `err` as the run's error event; the exit code: bad input (a `ConfigError`) 2, else 1 (with the
    traceback on stderr)."""
    events.emit("error", message=str(err), durable=True)
    if isinstance(err, ConfigError):
        return EXIT_BAD_SPEC
    traceback.print_exc()
    return EXIT_FAILED


def cancel_request_file(spec_path: Path) -> Path:
    """The file whose existence asks the job of `spec_path` to stop at its next step (beside the spec)."""
    return spec_path.with_name(spec_path.name + ".cancel")


def _run(path: Path, spec: dict[str, Any], events: EventLog, *, cancel_file: Path) -> int:
    """Validate the config and suites, train and score, turning each way it can end into its event and
    exit code."""
    try:
        from lorafleet.errors import TrainingInterrupted
        from lorafleet.training import parse_config, train
        from lorafleet.training.report import SUMMARY_FILE, record_data_scrub, write_summary

        try:
            config = parse_config(spec["config"], source="job config")
            suites = _suites(path, spec, config)
        except ConfigError as err:
            events.emit("error", message=str(err), durable=True)
            return EXIT_BAD_SPEC
        total_steps = config.training.max_steps

        def log(message: str) -> None:
            print(message, flush=True)
            events.emit("log", message=message)

        def on_step(record: dict[str, Any]) -> None:
            metrics = {key: value for key, value in record.items() if key != "step"}
            events.emit("step", step=record["step"], total_steps=total_steps, metrics=metrics)
            if cancel_file.exists():  # asked to stop (Ray): the training's own Ctrl-C path checkpoints
                raise KeyboardInterrupt

        try:
            result = train(
                config, resume=spec.get("resume", False), show_progress=False, log=log, on_step=on_step
            )
            record_data_scrub(result.adapter_dir, config.data)  # a recipe with data.scrub: into the card
        except TrainingInterrupted as err:
            events.emit("cancelled", message=str(err), durable=True)
            return EXIT_CANCELLED
        except LorafleetError as err:  # a data file missing or bad, a setting the device cannot honour, ...
            return _failed(events, err)
        probe = spec.get("probe", True)
        if suites or probe:
            count = f"{len(suites)} suite{'' if len(suites) == 1 else 's'}"
            log(f"scoring the version on {count}" + (" and the general probe" if probe else ""))
            try:
                scores = _score(config, result.adapter_dir, suites, probe, cancel_file)
            except KeyboardInterrupt:
                message = "cancelled while scoring the trained adapter (training had finished); no checkpoint"
                events.emit("cancelled", message=message, durable=True)
                return EXIT_CANCELLED
            except LorafleetError as err:  # a suite's file or rows went bad since they were checked, ...
                return _failed(events, err)
            result.summary["evaluation"] = {**result.summary.get("evaluation", {}), **scores}
            write_summary(result.run_dir / SUMMARY_FILE, result.summary)
        _state.finishing = True
        events.emit(
            "result",
            adapter_dir=str(result.adapter_dir),
            run_dir=str(result.run_dir),
            summary=result.summary,
            durable=True,
        )
        return EXIT_OK
    except KeyboardInterrupt:  # cancelled outside the training loop (loading the model, say)
        events.emit(
            "cancelled", message="cancelled outside the training loop; no checkpoint written", durable=True
        )
        return EXIT_CANCELLED
    except Exception as err:
        traceback.print_exc()
        events.emit("error", message=f"{type(err).__name__}: {err}", durable=True)
        return EXIT_FAILED


def _suites(path: Path, spec: dict[str, Any], config: FinetuneConfig) -> list[Suite]:
    """The spec's suites (paths resolved beside the spec), each file read and checked now, before training:
    `ConfigError` naming the suite and its file:line for a bad row or metric."""
    from lorafleet.evaluation.suites import Suite, read_suite

    suites = [
        Suite(id=s["id"], adapter=s["adapter"], metric=s["metric"], path=path.parent / Path(s["path"]))
        for s in spec.get("suites", [])
    ]
    for suite in suites:
        try:
            read_suite(
                suite.path,
                suite.metric,
                system_prompt=config.data.system_prompt,
                max_rows=config.eval.generation_rows,
            )
        except ConfigError as err:
            raise type(err)(f"suite {suite.id} (adapter {suite.adapter}): {err}", field=err.field) from err
    return suites


def _score(
    config: FinetuneConfig, adapter_dir: Path, suites: list[Suite], probe: bool, cancel_file: Path
) -> dict[str, Any]:
    """The trained adapter's suite scores and probe (`evaluation.version`); the cancel file stops it."""
    from lorafleet.evaluation.version import score_version

    def check_cancel(_: int) -> None:
        if cancel_file.exists():
            raise KeyboardInterrupt

    return score_version(config, adapter_dir, suites, probe=probe, on_batch=check_cancel)


@contextlib.contextmanager
def _lorafleet_home(home: Path | None) -> Iterator[None]:
    """Set $LORAFLEET_HOME for the job and put the old value back (a Ray worker runs many jobs)."""
    if home is None:
        yield
        return
    old = os.environ.get("LORAFLEET_HOME")
    os.environ["LORAFLEET_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LORAFLEET_HOME", None)
        else:
            os.environ["LORAFLEET_HOME"] = old


class _State:
    finishing = False  # training returned: a late SIGTERM no longer interrupts the job


_state = _State()


def _cancel_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: Ctrl-C for the training loop, once; later SIGTERMs are ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not _state.finishing:
        raise KeyboardInterrupt


def die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False if the parent is already gone.

    The parent is the pid in $LORAFLEET_JOB_PARENT_PID when set (the executor sets it), else anything
    but init. Note that Linux tracks the parent *thread*: the child dies when the thread that started
    it exits. A no-op (True) on other systems.
    """
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"warning: prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()})", file=sys.stderr)
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit():
        return os.getppid() == int(expected)
    return os.getppid() != 1


def main(argv: list[str] | None = None) -> int:
    """`python -m lorafleet.jobs.runner SPEC.json`: run the job, return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lorafleet.jobs.runner SPEC.json", file=sys.stderr)
        return EXIT_BAD_SPEC
    if not die_with_parent():
        print("error: the process that started this job has already exited", file=sys.stderr)
        return EXIT_FAILED
    signal.signal(signal.SIGTERM, _cancel_on_sigterm)
    return run_spec(args[0])


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None, so the line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
