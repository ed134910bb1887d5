"""What a tenant reads about its job's run: the runner's messages without the server's paths and names.

The runner and the training loop write for an operator: "checkpoint saved in /srv/lorafleet/work/…",
"/srv/lorafleet/artifacts/tenants/tn-…/datasets/file-….jsonl:3: 'completion' must be a string". The
job's events and error are read by the tenant, who knows its files by the names it uploaded them under
and should learn nothing of the host. `TenantText` rewrites a message for the tenant:

    a known path (the job's training file)        → its name as uploaded: "train.jsonl:3: …"
    any other absolute path or storage URL          → "<server path>"
    the worker's id, the host's name                → "the server"

The worker logs the message as written to the server log, where operators find the detail.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping

SERVER_PATH = "<server path>"
_PATH_CHARS = r"[^\s'\"`,;:()<>\[\]{}]"  # up to whitespace, quotes, brackets or a ":3" line number
# A storage URL (file://, s3://, any scheme but http and https: the artifact store's), or an absolute
# path: a "/" that does not continue a word, a number ("1/6"), a URL or a relative path.
_SERVER_PATH = re.compile(
    rf"\b(?!https?://)[a-z][a-z0-9+.\-]*://{_PATH_CHARS}*|(?<![\w.:/~\-])/{_PATH_CHARS}+", re.IGNORECASE
)


class TenantText:
    """Rewrites messages for a tenant: `names` maps paths to what the tenant calls them (see above)."""

    def __init__(self, names: Mapping[str, str] | None = None, *, hidden: Iterable[str] = ()) -> None:
        self.names = sorted((names or {}).items(), key=lambda item: -len(item[0]))  # longest path first
        words = sorted({word for word in (*hidden, socket.gethostname()) if word}, key=len, reverse=True)
        self._hidden = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b") if words else None

    def __call__(self, message: str) -> str:
        for path, name in self.names:
            message = message.replace(path, name)
        message = _SERVER_PATH.sub(SERVER_PATH, message)
        if self._hidden is not None:
            message = self._hidden.sub("the server", message)
        return message
