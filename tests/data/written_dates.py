"""Read back every date the generated example tasks write, in any of `example_text.DATE_STYLES`."""

from __future__ import annotations

import datetime
import re

from lorafleet.data.example_text import MONTHS

_MONTH = "|".join(MONTHS)
_ABBREVIATED = "|".join(month[:3] for month in MONTHS)
_NUMBER = {name.casefold(): index + 1 for index, name in enumerate(MONTHS)} | {
    name[:3].casefold(): index + 1 for index, name in enumerate(MONTHS)
}
_PATTERNS = (  # each gives year, month, day as named groups
    r"\b(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})\b",  # 2025-03-05
    rf"\b(?P<month>{_MONTH}|{_ABBREVIATED}) (?P<day>\d{{1,2}})(?:st|nd|rd|th)?,? (?P<year>\d{{4}})\b",
    rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)? (?P<month>{_MONTH}) (?P<year>\d{{4}})\b",  # 5th March 2025
    r"\b(?P<day>\d{2})\.(?P<month>\d{2})\.(?P<year>\d{4})\b",  # 05.03.2025
)


def dates_written_in(text: str) -> set[datetime.date]:
    """Every date written in `text`."""
    found = set()
    for pattern in _PATTERNS:
        for match in re.finditer(pattern, text):
            month = match["month"]
            number = int(month) if month.isdigit() else _NUMBER[month.casefold()]
            found.add(datetime.date(int(match["year"]), number, int(match["day"])))
    return found
