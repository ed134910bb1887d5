"""Recognizers of our own for what Presidio's predefined ones miss in clinical text: medical record
numbers, street addresses, dates of birth and written-out dates.

Each is a `RegexRecognizer`: a few case-sensitive (or explicitly case-insensitive) patterns, each with a
score and an optional capture group that is the value (the context words around it are not PHI). They
subclass Presidio's `EntityRecognizer` so the analyzer runs them beside its own, and are built inside
functions because presidio is the `privacy` extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
WRITTEN_DATE = (
    rf"(?:{MONTH}\.?\s+{_DAY},?\s+\d{{4}}|{_DAY}\s+(?:of\s+)?{MONTH}\.?,?\s+\d{{4}}|{MONTH}\.?\s+\d{{4}})"
)
NUMERIC_DATE = r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2}))"
_STREET_WORD = r"(?:[A-Z][a-z]+\.?|\d+(?:st|nd|rd|th))"
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Loop|Row|Crescent|Close|Alley|Pike|Run)"
)
_UNIT = r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Rm|Room|Fl|Floor|#)\.?\s*#?\s*[A-Za-z0-9-]+)"
_CITY_STATE_ZIP = r"(?:,?\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2},\s*[A-Z]{2}\.?(?:\s+\d{5}(?:-\d{4})?)?)"
STREET_ADDRESS = (
    rf"\b\d{{1,6}}[A-Z]?\s+(?:[NSEW]\.?\s+)?{_STREET_WORD}(?:\s+{_STREET_WORD}){{0,3}}?\s+{_SUFFIX}\b\.?"
    rf"{_UNIT}?{_CITY_STATE_ZIP}?"
)
_RECORD_KEY = (
    r"(?:MRN|MR\s?#|MR\s?No\.?|medical\s+record(?:\s+(?:number|num|no\.?|#))?|(?:record|chart|case|"
    r"patient|pt|hospital|hosp\.?|account|acct\.?|encounter|visit|admission|member|insurance|policy|"
    r"unit)\s*(?:id|number|num|no\.?|#))"
)
_RECORD_VALUE = r"([A-Z]{0,4}[-\s]?\d[\dA-Z]*(?:[-/.]\d[\dA-Z]*)*)"


@dataclass(frozen=True)
class Pattern:
    """One regular expression; `group` is the capture group holding the value (0: the whole match)."""

    name: str
    regex: str
    score: float
    group: int = 0
    flags: int = 0


def regex_recognizer(entity: str, name: str, patterns: list[Pattern]) -> Any:
    """A Presidio `EntityRecognizer` that reports every match of `patterns` as `entity`."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    compiled = [(p, re.compile(p.regex, p.flags)) for p in patterns]

    class RegexRecognizer(EntityRecognizer):
        def load(self) -> None:
            """Nothing to load: the patterns are compiled already."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = []
            for pattern, regex in compiled:
                for match in regex.finditer(text):
                    start, end = match.span(pattern.group)
                    if end <= start:
                        continue
                    found.append(
                        RecognizerResult(
                            entity_type=entity,
                            start=start,
                            end=end,
                            score=pattern.score,
                            recognition_metadata={
                                RecognizerResult.RECOGNIZER_NAME_KEY: name,
                                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,  # Presidio matches by it
                                "rule": pattern.name,
                            },
                        )
                    )
            return found

    return RegexRecognizer(supported_entities=[entity], name=name)


def medical_record_recognizer() -> Any:
    """Record, chart, account and member numbers: after a key word (MRN, chart #, …), or any long
    digit run (six or more digits that no other recognizer claims are identifiers in a note)."""
    return regex_recognizer(
        "MEDICAL_RECORD_NUMBER",
        "MedicalRecordNumberRecognizer",
        [
            Pattern("after key", rf"\b{_RECORD_KEY}\s*[:#.]?\s*(?:is\s+)?{_RECORD_VALUE}", 0.85, 1, re.I),
            Pattern("long number", r"\b[A-Z]{0,4}-?\d{6,12}\b", 0.4),
            Pattern("grouped number", r"\b\d{2,5}(?:-\d{2,6}){1,3}\b", 0.3),
        ],
    )


def address_recognizer() -> Any:
    """Street addresses (number, street words, suffix, unit, city, state, ZIP), PO boxes, city + ZIP."""
    return regex_recognizer(
        "ADDRESS",
        "StreetAddressRecognizer",
        [
            Pattern("street", STREET_ADDRESS, 0.85),
            Pattern("po box", r"\bP\.?\s?O\.?\s+Box\s+\d+" + _CITY_STATE_ZIP + "?", 0.85, 0, re.I),
            Pattern(
                "city state zip", r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2},\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?", 0.7
            ),
        ],
    )


def birth_date_recognizer() -> Any:
    """A date after DOB, born, date of birth: a date of birth, not just any date."""
    key = r"(?:DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?|b\.)"
    return regex_recognizer(
        "DATE_OF_BIRTH",
        "BirthDateRecognizer",
        [Pattern("after key", rf"\b{key}\s*[:\-]?\s*({NUMERIC_DATE}|{WRITTEN_DATE})", 0.9, 1, re.I)],
    )


def email_recognizer() -> Any:
    """E-mail addresses. Presidio's own checks the domain with `tldextract`, which downloads the public
    suffix list on first use; lorafleet stays offline."""
    return regex_recognizer(
        "EMAIL_ADDRESS",
        "EmailAddressRecognizer",
        [Pattern("address", r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b", 0.9)],
    )


def phone_recognizer() -> Any:
    """Phone numbers by shape, with a country prefix kept in the span ("+1 (411) 319 8833", "1-685-346-
    3866"): Presidio's own checks numbers against real area codes and misses made-up or new ones."""
    return regex_recognizer(
        "PHONE_NUMBER",
        "PhoneShapeRecognizer",
        [
            Pattern("nanp", r"(?<![\w+])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b", 0.7),
            Pattern("international", r"\+\d{1,3}[\s.-]\(?\d{1,5}\)?(?:[\s.-]\d{2,5}){1,4}\b", 0.6),
        ],
    )


def written_date_recognizer() -> Any:
    """Dates with the month in words ("March 3, 2021", "3rd of March 2021", "Mar 2021") and numeric dates
    with any separator, which Presidio's date patterns partly miss."""
    return regex_recognizer(
        "DATE_TIME",
        "WrittenDateRecognizer",
        [
            Pattern("written", rf"\b{WRITTEN_DATE}\b", 0.75),
            Pattern("numeric", rf"\b{NUMERIC_DATE}\b", 0.6),
        ],
    )
