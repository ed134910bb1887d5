"""Finding PHI/PII in a document's texts: Presidio's analyzer, offline, with our recognizers.

Presidio's default analyzer loads spaCy's `en_core_web_lg` (and downloads it when missing); lorafleet
never downloads at run time, so the analyzer runs on a blank English pipeline (tokenizer only, lemmas =
lower-cased words so Presidio's context words still work) and finds names by rule (`names`). The
recognizers: Presidio's pattern recognizers (phone, date, SSN, credit card, IP, IBAN, URL) and
ours (`recognizers`, `names`; e-mail is ours: Presidio's looks domains up online).

A document is a row of a dataset: its string fields are analysed together, so a name found with context
in one field (the note) is also found bare in another (the answer's `"patient": "…"`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.privacy.names import COMMON_WORDS

SCORE_THRESHOLD = 0.3  # Presidio's phone and date patterns score 0.4–0.6 without context
_CONFIDENT_NAME = 0.8  # names this sure seed the document's bare mentions


@dataclass(frozen=True)
class Finding:
    """One span of PHI in one text: where, what kind, which recognizer found it."""

    start: int
    end: int
    entity_type: str
    recognizer: str
    score: float


@lru_cache(maxsize=1)
def build_analyzer() -> Any:
    """Presidio's `AnalyzerEngine` on a blank spaCy pipeline with our recognizers (built once per process)."""
    try:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer import predefined_recognizers as predefined
    except ImportError as err:
        raise ConfigError("scrubbing PHI/PII needs Presidio: pip install 'lorafleet[privacy]'") from err

    from lorafleet.privacy import recognizers
    from lorafleet.privacy.names import person_recognizer

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        predefined.PhoneRecognizer(),
        predefined.DateRecognizer(),
        predefined.UsSsnRecognizer(),
        predefined.CreditCardRecognizer(),
        predefined.IpRecognizer(),
        predefined.IbanRecognizer(),
        predefined.UrlRecognizer(),
        recognizers.email_recognizer(),
        recognizers.phone_recognizer(),
        recognizers.medical_record_recognizer(),
        recognizers.address_recognizer(),
        recognizers.birth_date_recognizer(),
        recognizers.written_date_recognizer(),
        person_recognizer(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=_blank_nlp_engine(), supported_languages=["en"])


def _blank_nlp_engine() -> Any:
    """Presidio's spaCy engine holding `spacy.blank("en")`: no model file, nothing downloaded."""
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from spacy.language import Language

    if "lorafleet_lower_lemmas" not in Language.factories:

        @Language.component("lorafleet_lower_lemmas")
        def lower_lemmas(doc: Any) -> Any:
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        def load(self) -> None:
            nlp = spacy.blank("en")
            nlp.add_pipe("lorafleet_lower_lemmas")
            self.nlp = {"en": nlp}  # type: ignore[assignment]

    engine = BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    engine.load()
    return engine


def find_entities(texts: list[str]) -> list[list[Finding]]:
    """The PHI in each of one document's texts, overlaps resolved (the longer span, then the surer, wins).

    Bare later mentions of a confidently found name are added in every text of the document.
    """
    analyzer = build_analyzer()
    raw = [_analyze(analyzer, text) for text in texts]
    name_words = {
        word
        for text, findings in zip(texts, raw, strict=True)
        for f in findings
        if f.entity_type == "PERSON" and f.score >= _CONFIDENT_NAME
        for word in re.findall(r"[A-Z][\w’'-]+", text[f.start : f.end])
        if word.lower() not in COMMON_WORDS and len(word) > 1
    }
    return [
        _resolve(findings + _mentions(text, name_words)) for text, findings in zip(texts, raw, strict=True)
    ]


def _analyze(analyzer: Any, text: str) -> list[Finding]:
    if not text.strip():
        return []
    return [
        Finding(r.start, r.end, r.entity_type, _recognizer_name(r), r.score)
        for r in analyzer.analyze(text=text, language="en", score_threshold=SCORE_THRESHOLD)
    ]


def _recognizer_name(result: Any) -> str:
    metadata = result.recognition_metadata or {}
    return str(metadata.get("recognizer_name", "unknown"))


def _mentions(text: str, words: set[str]) -> list[Finding]:
    """Every whole-word occurrence of a known name word in `text`."""
    if not words:
        return []
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    return [
        Finding(m.start(), m.end(), "PERSON", "RepeatedMentionRecognizer", 0.8)
        for m in re.finditer(pattern, text)
    ]


def _resolve(findings: list[Finding]) -> list[Finding]:
    """Drop every span that overlaps a longer (or equally long and surer) one, so no character is
    replaced twice."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-(f.end - f.start), -f.score, f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
