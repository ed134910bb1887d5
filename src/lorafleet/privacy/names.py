"""Person names without a statistical NER (no spaCy model may be downloaded): capitalised words that
context marks as a name.

No list of names is used, so names from any list are found alike. A run of one to three capitalised
words (O'Brien, McKay, Smith-Jones, with middle initials) is a name when
- a title or a role word comes before it ("Dr.", "Mrs", "Patient", "pt", "Name:", "son", "wife",
  "seen by", "contact" …): score 0.85;
- it is written "Last, First" after a name key ("Name: Smith, John");
- two or more such words are followed by what follows a person ("…, a 54-year-old", "(DOB", ", born",
  "was admitted", "presents", "'s"): score 0.8;
- two or three such words stand mid-sentence and none is a common word: score 0.5 (proper nouns in a
  note are mostly people; places and brands are fewer, and F2 weighs a missed name four times).
Later bare mentions of a name found this way ("Smith" after "John Smith") are added per document by
`analyzer.find_entities`, which sees all of a document's fields.
"""

from __future__ import annotations

import re
from typing import Any

NAME_WORD = r"(?:[A-Z][’'])?(?:Mc|Mac|De|Di|La|Le|Van|Von)?[A-Z][a-z]+(?:[-’'][A-Z][a-z]+)?"
_NAME = rf"{NAME_WORD}(?:\s+(?:[A-Z]\.\s+)?{NAME_WORD}){{0,2}}"
_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sr|Sra|Rev)\.?"
_ROLE = (
    r"(?:patient|pt|name|patient\s+name|son|daughter|wife|husband|mother|father|brother|sister|spouse|"
    r"partner|friend|guardian|caregiver|contact|emergency\s+contact|next\s+of\s+kin|nok|informant|"
    r"grand(?:son|daughter|mother|father)|niece|nephew|aunt|uncle|cousin|fianc[ée]e?|neighbou?r|"
    r"accompanied\s+by|seen\s+by|referred\s+by|signed\s+by|dictated\s+by|reviewed\s+by|per|attending|"
    r"physician|provider|pcp|nurse|doctor|surgeon|resident|cc|dear|hi|hello|thanks|regards|sincerely|"
    r"named|called|spoke\s+(?:to|with)|discussed\s+with|visited\s+by|mr\.?\s+and\s+mrs\.?)"
)
_AFTER = (
    r"(?:,?\s+(?:a|an)\s+\d{1,3}[- ](?:year|yr|y/?o)|\s*\((?:DOB|MRN|age|\d{1,3})|,\s*(?:DOB|MRN|age|born)\b|"
    r"\s+(?:was|is|has|had|presents|presented|reports|reported|states|stated|denies|denied|came|arrived|"
    r"returns|returned|called|complains|complained|underwent|tolerated|agrees|agreed|will|needs)\b|’s\b|'s\b)"
)
_COMMON = (
    "a an the and or but if of in on at to for from by with without as is was are were be been has "
    "have had he she they we you i it his her their our your my this that these those there here "
    "then than so not no yes per via upon after before during since until while when where which who "
    "whom whose what why how all any some each every both either neither other another such same new "
    "old good bad normal abnormal mr mrs ms miss dr prof patient pt name son daughter wife husband "
    "mother father brother sister spouse contact nurse doctor physician provider attending resident "
    "surgeon family friend guardian caregiver january february march april may june july august "
    "september october november december jan feb mar apr jun jul aug sep sept oct nov dec monday "
    "tuesday wednesday thursday friday saturday sunday today tomorrow yesterday morning evening "
    "night am pm hospital clinic center centre medical medicine health healthcare care unit "
    "department dept emergency room er ed icu ward floor street st avenue ave road rd drive lane "
    "boulevard suite apt north south east west county city state university college school history "
    "hx chief complaint cc hpi assessment plan impression diagnosis dx exam examination physical "
    "review systems ros vitals vital signs labs lab results result imaging ct mri xray x-ray ekg ecg "
    "cbc bmp follow followup follow-up up discharge discharged admission admitted admit summary note "
    "notes progress report reports denies states presents presented complains reported noted given "
    "started stopped continue continued medications medication meds allergies allergy social "
    "surgical past prior current subjective objective blood pressure heart rate temperature pulse "
    "weight height bmi oxygen saturation pain chest abdominal headache fever cough nausea vomiting "
    "diabetes hypertension asthma copd cancer type mellitus disease disorder syndrome acute chronic "
    "mild moderate severe left right bilateral insurance medicare medicaid phone tel email address "
    "dob mrn age sex male female gender record number signed electronically reviewed dictated "
    "transcribed date time visit office primary secondary tertiary case manager social worker "
    "pharmacy pharmacist lab laboratory radiology cardiology oncology neurology pediatrics surgery "
    "internal general practice md do rn np pa phd mph dds msw lpn "
)
COMMON_WORDS = frozenset(_COMMON.split())


def _is_name(words: list[str]) -> bool:
    """True when no word is a common (non-name) word."""
    return bool(words) and all(w.lower().strip(".") not in COMMON_WORDS for w in words)


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Shorten a span to its leading name words, dropping trailing common words ("John Smith Reports")."""
    words = list(re.finditer(rf"{NAME_WORD}|[A-Z]\.", text[start:end]))
    keep = []
    for word in words:
        if word.group().lower().strip(".") in COMMON_WORDS:
            break
        keep.append(word)
    if not keep or not any(len(w.group()) > 2 for w in keep):
        return None
    return start + keep[0].start(), start + keep[-1].end()


def find_names(text: str) -> list[tuple[int, int, float, str]]:
    """(start, end, score, rule) of every name the rules above find in `text`."""
    found: list[tuple[int, int, float, str]] = []

    def add(start: int, end: int, score: float, rule: str) -> None:
        span = _trim(text, start, end)
        if span is not None:
            found.append((*span, score, rule))

    for match in re.finditer(rf"\b{_TITLE}\s+({_NAME})", text):
        add(*match.span(1), 0.85, "title")
    for match in re.finditer(rf"\b(?i:{_ROLE})\b[\s:,\"'=\-]*(?:(?i:is|was)\s+)?({_NAME})", text):
        add(*match.span(1), 0.85, "role")
    for match in re.finditer(rf"\b(?i:name|patient|pt)\b[\s:\"'=\-]*({NAME_WORD}),\s+({NAME_WORD})", text):
        add(match.start(1), match.end(2), 0.85, "last, first")
    for match in re.finditer(rf"\b({NAME_WORD}(?:\s+(?:[A-Z]\.\s+)?{NAME_WORD}){{1,2}}){_AFTER}", text):
        if _is_name(match.group(1).split()):
            add(*match.span(1), 0.8, "before person words")
    for match in re.finditer(
        rf"(?<=[a-z0-9,;:)]\s)({NAME_WORD}(?:\s+(?:[A-Z]\.\s+)?{NAME_WORD}){{1,2}})\b", text
    ):
        if _is_name(match.group(1).split()):
            add(*match.span(1), 0.5, "mid-sentence proper noun")
    return found


def person_recognizer() -> Any:
    """`find_names` as a Presidio recognizer of PERSON."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class PersonNameRecognizer(EntityRecognizer):
        def load(self) -> None:
            """Nothing to load: rules only."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [
                RecognizerResult(
                    entity_type="PERSON",
                    start=start,
                    end=end,
                    score=score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: "PersonNameRecognizer",
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,  # Presidio matches by it
                        "rule": rule,
                    },
                )
                for start, end, score, rule in find_names(text)
            ]

    return PersonNameRecognizer(supported_entities=["PERSON"], name="PersonNameRecognizer")
