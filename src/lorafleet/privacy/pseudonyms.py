"""Fake values for found PHI: the same within a document, different across documents, deterministic.

Every choice is drawn from HMAC-SHA256(secret, document key ‖ kind ‖ value), so a patient keeps one
fake name throughout a note and its answer (the task stays learnable: the answer's `patient` field
still matches the note), another note's patient gets another, and the same secret gives the same
output (reproducible runs); without the secret the mapping cannot be recomputed from a guess.

Names are replaced word by word with the word's role (first or last) kept: "John Smith", "Mr. Smith"
and "Smith" become "Ravi Okafor", "Mr. Okafor" and "Okafor". Numbers keep their shape (digits stay
digits, letters letters, separators stay); dates move by one per-document shift and keep their format,
so intervals between a note's dates are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re

_FAKE_FIRST = (
    "Avery Blake Casey Dana Eden Finley Gray Harper Indigo Jules Kai Lane Marlow Noel Oakley Parker "
    "Quinn Reese Sage Tatum Umber Vale Wren Xen Yael Zion Arden Brook Cyan Dell Ember Fallon Gale "
    "Hollis Ivo Jory Kit Lark Merritt Nico "
)
FAKE_FIRST = _FAKE_FIRST.split()
_FAKE_LAST = (
    "Ashgrove Birchwood Coldwell Dunmore Elmstead Fairholm Glenrock Hartwell Ivywood Juniper Kestrel "
    "Larkspur Millbrook Northcote Oakhurst Pinecrest Quarry Redfern Stonebridge Thornbury Underhill "
    "Vantongeren Westbrook Yarrow Zephyrine Amberley Bracken Cresswell Dovecote Edgewater Foxley "
    "Greywood Hazeldene Inglewood Kingsmere Lindenhall Marchbank Netherby Orchardson Pembrook "
)
FAKE_LAST = _FAKE_LAST.split()
_FAKE_STREETS = "Maple Cedar Harbor Meadow Summit Orchard Lakeview Ridge Willowmere Foxglove Heron Quarry "
FAKE_STREETS = _FAKE_STREETS.split()
_DATE_FORMATS = (
    "%m/%d/%Y",
    "%m/%d/%y",
    "%Y-%m-%d",
    "%d.%m.%Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%B %Y",
)
_TITLE = re.compile(r"^(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?$")


class Pseudonymizer:
    """The fake values of one document; `replace(kind, value)` is its one verb."""

    def __init__(self, secret: bytes, document: str) -> None:
        self._key = hmac.new(secret, document.encode(), hashlib.sha256).digest()
        self._roles: dict[str, str] = {}
        self._names: dict[tuple[str, str], str] = {}

    def _draw(self, *parts: str) -> int:
        message = "\x1f".join(parts).encode()
        return int.from_bytes(hmac.new(self._key, message, hashlib.sha256).digest()[:8], "big")

    def learn_names(self, names: list[str]) -> None:
        """Record each word's role (the last word of a multi-word name is a last name) before replacing,
        so a bare "Smith" later gets the same fake last name as "John Smith"."""
        for name in names:
            words = [w for w in name.replace(",", " ").split() if not _TITLE.match(w)]
            if len(words) > 1:
                last = words[0] if "," in name else words[-1]
                for word in words:
                    self._roles.setdefault(word, "last" if word == last else "first")

    def replace(self, kind: str, value: str) -> str:
        """The fake for `value`, a found span of `kind` (a Presidio entity type)."""
        if kind == "PERSON":
            return self._person(value)
        if kind in ("DATE_TIME", "DATE_OF_BIRTH"):
            return self._date(value)
        if kind == "EMAIL_ADDRESS":
            first, last = self._pick(FAKE_FIRST, "email-first", value), self._pick(FAKE_LAST, "email", value)
            return f"{first}.{last}@example.org".lower()
        if kind == "ADDRESS":
            number = 10 + self._draw("address-number", value) % 9000
            return f"{number} {self._pick(FAKE_STREETS, 'street', value)} Street"
        return self._same_shape(kind, value)

    def _pick(self, choices: list[str], *parts: str) -> str:
        return choices[self._draw(*parts) % len(choices)]

    def _person(self, value: str) -> str:
        def fake(match: re.Match[str]) -> str:
            word = match.group()
            if _TITLE.match(word) or len(word) == 1:
                return word
            role = self._roles.get(word, "first" if match.start() == 0 and " " in value else "last")
            return self._name_word(role, word)

        return re.sub(r"[A-Za-z][\w’'-]*\.?", fake, value)

    def _name_word(self, role: str, word: str) -> str:
        """The fake for one name word; two real words of a document never share a fake (next one on)."""
        key = (role, word)
        if key not in self._names:
            choices = FAKE_LAST if role == "last" else FAKE_FIRST
            taken = {v for (r, _), v in self._names.items() if r == role}
            start = self._draw("name", role, word)
            for step in range(len(choices)):
                candidate = choices[(start + step) % len(choices)]
                if candidate not in taken:
                    break
            self._names[key] = candidate
        return self._names[key]

    def _date(self, value: str) -> str:
        shift = datetime.timedelta(days=1 + self._draw("date shift") % 364)
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.datetime.strptime(value.strip(), fmt)
            except ValueError:
                continue
            return (parsed - shift).strftime(fmt)
        return self._same_shape("DATE_TIME", value)

    def _same_shape(self, kind: str, value: str) -> str:
        """Each digit a digit, each letter a letter, the rest kept; never equal to `value` for digits."""
        draw = self._draw("shape", kind, value)
        out = []
        for i, char in enumerate(value):
            step = (draw >> (i % 56)) & 0xFF
            if char.isdigit():
                out.append(str((int(char) + 1 + step % 9) % 10))
            elif char.isascii() and char.isalpha():
                base = "A" if char.isupper() else "a"
                out.append(chr(ord(base) + (ord(char.upper()) - 65 + 1 + step % 25) % 26))
            else:
                out.append(char)
        return "".join(out)
