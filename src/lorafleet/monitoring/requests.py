"""The request log's writer, and the training rows that corrections become.

`RequestLogWriter` takes each finished completion from the request path and writes it to the registry
(`registry.requests`) on a thread of its own: `record()` only puts the row on a bounded queue, never
waiting (a full queue drops the row with a warning), and a failed write is logged, never raised. So the
log can neither fail nor slow a request. The same thread deletes rows older than the retention when it
starts and every `prune_seconds` after. With `scrub_text` (the server's `scrub_request_log`) that thread
also replaces the PHI/PII in each completion's prompt, messages and answer by pseudonyms (`privacy.scrub`,
one document per completion, so a person keeps one fake name across prompt and answer) before it is
stored; a completion whose scrubbing fails is stored without its text, never with the original.

`correction_rows` turns corrected completions into fine-tuning rows:

    chat completion    {"messages": [...its messages..., {"role": "assistant", "content": correction}]}
    text completion    {"prompt": prompt, "completion": correction}

In a file that has both, a text completion is written as a chat row (its prompt as the user's turn),
which is what the data layer reads a prompt/completion row as anyway: one file holds one row format.
A row the data layer would refuse (a system message after the first turn, say) is left out and named.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.errors import DataError
from lorafleet.registry import Registry
from lorafleet.registry.requests import RequestLog
from lorafleet.registry.tables import Dataset, LoggedCompletion

logger = logging.getLogger(__name__)
DAY_SECONDS = 86_400.0
_STOP = object()  # wakes the writer's thread to finish


class RequestLogWriter:
    """Writes logged completions to `log` in the background, in batches, and prunes rows older than
    `retention_days` on start and every `prune_seconds`. `start()` it, `close()` it (which writes what
    is still queued first)."""

    def __init__(
        self,
        log: RequestLog,
        *,
        retention_days: float,
        prune_seconds: float = 3600.0,
        max_pending: int = 10_000,
        batch_size: int = 256,
        scrub_text: bool = False,
    ) -> None:
        self.log = log
        self.scrubber = TextScrubber() if scrub_text else None
        self.retention_days = retention_days
        self.prune_seconds = prune_seconds
        self.batch_size = batch_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._pending = 0  # recorded and not yet written (or given up on)
        self._changed = threading.Condition()
        self._dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lorafleet-request-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, completion: LoggedCompletion) -> None:
        """Queue `completion` to be written; never blocks, never raises."""
        with self._changed:
            if self._closed:
                logger.debug("request log closed: completion %s is not logged", completion.id)
                return
            self._pending += 1
        try:
            self._queue.put_nowait(completion)
        except queue.Full:
            with self._changed:
                self._dropped += 1
                dropped = self._dropped
            self._done(1)
            if dropped % 1000 == 1:  # the first drop, then every thousandth
                logger.warning(
                    "request log queue is full (%d completions waiting): completion %s and %d before it "
                    "are not logged; is the database slow or down?",
                    self._queue.maxsize,
                    completion.id,
                    dropped - 1,
                )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded completion is written (or given up on); False after `timeout` s."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout=timeout)

    def prune(self) -> int:
        """Delete completions (and their feedback) older than the retention now; how many."""
        return self.log.prune(time.time() - self.retention_days * DAY_SECONDS)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to `timeout` s), then stop the thread; later records are ignored."""
        with self._changed:
            self._closed = True
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                logger.warning("request log: completions still queued at shutdown are not logged")
                return
            self._thread.join(timeout)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                self._prune_logged()
                next_prune = time.monotonic() + self.prune_seconds
            try:
                first = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.batch_size and first is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item for item in batch if item is not _STOP]
            if rows:
                if self.scrubber is not None:
                    for row in rows:
                        self.scrubber.scrub(row)
                self._write(rows)
                self._done(len(rows))
            if len(rows) < len(batch):
                return

    def _write(self, rows: list[LoggedCompletion]) -> None:
        """One transaction for the batch; if it fails, each row alone, so one bad row loses only itself."""
        try:
            self.log.add(rows)
            return
        except Exception:
            if len(rows) == 1:
                logger.exception("could not log completion %s", rows[0].id)
                return
        for row in rows:
            try:
                self.log.add([row])
            except Exception:
                logger.exception("could not log completion %s", row.id)

    def _prune_logged(self) -> None:
        try:
            pruned = self.prune()
        except Exception:
            logger.exception("could not prune the request log")
            return
        if pruned:
            logger.info("request log: pruned %d completions older than %g days", pruned, self.retention_days)

    def _done(self, count: int) -> None:
        with self._changed:
            self._pending -= count
            self._changed.notify_all()


class TextScrubber:
    """Replaces PHI/PII in a logged completion's text in place. The analyzer is built here, once (in the
    server's start-up, so a missing `privacy` extra is a `ConfigError` then, not a lost log later), and
    the pseudonym secret is `LORAFLEET_SCRUB_SECRET` or a random one per process."""

    def __init__(self) -> None:
        from lorafleet.privacy.analyzer import build_analyzer
        from lorafleet.privacy.scrub import scrub_secret

        build_analyzer()
        self.secret, _ = scrub_secret()

    def scrub(self, completion: LoggedCompletion) -> None:
        """The completion's prompt, messages and answer scrubbed as one document; on any failure their
        text is dropped (logged without text), so no original value is stored."""
        from lorafleet.privacy.scrub import FieldChoice, scrub_row

        row = {"prompt": completion.prompt, "messages": completion.messages, "text": completion.text}
        try:
            scrubbed, _, _ = scrub_row(row, self.secret, FieldChoice())
        except Exception:
            logger.exception("could not scrub completion %s: it is logged without its text", completion.id)
            scrubbed = {"prompt": None, "messages": None, "text": None}
        completion.prompt, completion.messages, completion.text = (
            scrubbed["prompt"],
            scrubbed["messages"],
            scrubbed["text"],
        )


@dataclass(frozen=True)
class Skipped:
    """A corrected completion whose training row the data layer refuses, and why."""

    completion_id: str
    reason: str


def correction_rows(pairs: list[tuple[LoggedCompletion, str]]) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Training rows of (completion, correction) pairs whose text was logged (see the module), and the
    completions left out because the data layer refuses their row."""
    from lorafleet.data.formats import detect_format, parse_row  # the data layer comes with torch

    chat = any(completion.messages is not None for completion, _ in pairs)
    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    for completion, correction in pairs:
        answer = {"role": "assistant", "content": correction}
        row: dict[str, Any]
        if completion.messages is not None:
            row = {"messages": [*completion.messages, answer]}
        elif chat:
            row = {"messages": [{"role": "user", "content": completion.prompt or ""}, answer]}
        else:
            row = {"prompt": completion.prompt or "", "completion": correction}
        try:
            parse_row(row, detect_format(row), completion.id)
        except ValueError as err:  # the data layer's row errors
            skipped.append(Skipped(completion.id, str(err)))
            continue
        rows.append(row)
    return rows, skipped


def store_corrections(
    registry: Registry,
    tenant_id: str,
    pairs: list[tuple[LoggedCompletion, str]],
    tokenizer: Any,
    *,
    name: str,
) -> tuple[Dataset | None, list[Skipped]]:
    """The corrections `pairs` stored as the tenant's fine-tune file `name` (None when no row is left), and
    the completions left out; `DataError` naming the file and line of a row the data layer refuses."""
    from lorafleet.data import inspect_rows  # the data layer comes with torch

    rows, skipped = correction_rows(pairs)
    if not rows:
        return None, skipped
    with tempfile.TemporaryDirectory(prefix="lorafleet-corrections-") as folder:
        path = write_jsonl(rows, Path(folder) / name)
        try:
            format, count, tokens = inspect_rows(path, tokenizer)
        except DataError as err:  # name the file, not the temporary folder
            raise DataError(str(err).replace(f"{folder}/", "")) from None
        dataset = registry.datasets.add(
            tenant_id, path, filename=name, format=format, rows=count, tokens=tokens
        )
    return dataset, skipped


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """`rows` as JSON lines at `path`."""
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
