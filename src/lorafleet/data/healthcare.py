"""A domain task: clinical notes full of synthetic PHI → a structured record.

Each row is `{"prompt": <instruction + note>, "completion": <JSON>}` with the fields

    patient     the patient's full name ("Maria Lopez"), from the header, the narrative or both
    dob         the date of birth, YYYY-MM-DD, written in one of several styles
    mrn         the medical record number exactly as the note writes it ("MRN-4821937", "H0048213")
    diagnosis   the assessment as its normalised name from DIAGNOSES ("type 2 diabetes"), though the
                note may write it another way ("T2DM", "non-insulin-dependent diabetes")
    medication  the drug started or continued, with its dose ("metformin 500 mg")
    follow_up   the follow-up date, YYYY-MM-DD, or null when none is booked

Notes also carry the patient's phone number and home address and the visit date, so every note holds
the five kinds of identifier a scrubber must find (names, dates, record numbers, phones, addresses),
and the visit date and date of birth are distractors for the follow-up. Every value an identifier is
drawn from sits in a `PhiSources` (name lists, number and phone formats, streets, cities, date
styles): `DEFAULT_PHI` is what `TASK` uses, and `healthcare_task(sources)` builds the same task over
other sources, so a scrubber can be measured on identifiers it was not built from. All the text is
invented; no real patient is in it. Generated from a fixed seed: the same files every time.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from lorafleet.data.example_text import DATE_STYLES, FIRST_NAMES, LAST_NAMES, iso, random_date, written_date
from lorafleet.data.task_generation import ExampleTask

FIELDS = ("patient", "dob", "mrn", "diagnosis", "medication", "follow_up")
INSTRUCTION = "Extract this clinical note as JSON (patient, dob, mrn, diagnosis, medication, follow_up)."

# Identifier formats: "#" becomes a digit, "@" a capital letter.
MRN_FORMATS = ("MRN-#######", "H#######", "##-###-###", "MR######", "@@#######")
PHONE_FORMATS = ("(###) ###-####", "###-###-####", "###.###.####", "+1 ### ### ####")
STREETS = (
    "Maple Avenue", "Oak Street", "Cedar Lane", "Elm Road", "Birch Court", "Willow Drive", "Pine Street",
    "Harbor Boulevard", "Lakeview Terrace", "Mill Road", "Chestnut Way", "Sunset Avenue",
)  # fmt: skip
CITIES = (
    ("Springfield", "IL"), ("Riverton", "WY"), ("Fairview", "OR"), ("Greenville", "SC"), ("Madison", "WI"),
    ("Clinton", "IA"), ("Franklin", "TN"), ("Georgetown", "TX"), ("Salem", "MA"), ("Ashland", "KY"),
)  # fmt: skip


@dataclass(frozen=True)
class PhiSources:
    """Where a note's identifiers come from; swap any of them to generate notes with other PHI."""

    first_names: tuple[str, ...] = FIRST_NAMES
    last_names: tuple[str, ...] = LAST_NAMES
    mrn_formats: tuple[str, ...] = MRN_FORMATS
    phone_formats: tuple[str, ...] = PHONE_FORMATS
    streets: tuple[str, ...] = STREETS
    cities: tuple[tuple[str, str], ...] = CITIES  # (city, state)
    date_styles: tuple[Callable[[datetime.date], str], ...] = DATE_STYLES


DEFAULT_PHI = PhiSources()

# Each diagnosis: the ways a note writes it, and the medications (with dose) prescribed for it.
DIAGNOSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "type 2 diabetes": (
        ("type 2 diabetes", "T2DM", "non-insulin-dependent diabetes"),
        ("metformin 500 mg", "metformin 1000 mg", "empagliflozin 10 mg"),
    ),
    "hypertension": (
        ("hypertension", "high blood pressure", "HTN"),
        ("lisinopril 10 mg", "amlodipine 5 mg", "losartan 50 mg"),
    ),
    "asthma": (("asthma", "reactive airway disease"), ("albuterol 90 mcg", "budesonide 180 mcg")),
    "migraine": (("migraine", "migraine headaches"), ("sumatriptan 50 mg", "topiramate 25 mg")),
    "pneumonia": (
        ("pneumonia", "community-acquired pneumonia", "CAP"),
        ("amoxicillin 875 mg", "azithromycin 250 mg"),
    ),
    "urinary tract infection": (
        ("urinary tract infection", "UTI", "cystitis"),
        ("nitrofurantoin 100 mg", "trimethoprim 200 mg"),
    ),
    "hypothyroidism": (
        ("hypothyroidism", "underactive thyroid"),
        ("levothyroxine 50 mcg", "levothyroxine 75 mcg"),
    ),
    "depression": (
        ("depression", "major depressive disorder", "MDD"),
        ("sertraline 50 mg", "escitalopram 10 mg"),
    ),
    "atrial fibrillation": (("atrial fibrillation", "AFib", "AF"), ("apixaban 5 mg", "metoprolol 25 mg")),
    "gastroesophageal reflux": (
        ("gastroesophageal reflux", "GERD", "acid reflux"),
        ("omeprazole 20 mg", "pantoprazole 40 mg"),
    ),
}

_HEADER_NAME = ("Patient: {name}", "Name: {name}", "Pt: {name}")
_HEADER_DOB = ("DOB: {dob}", "Date of birth: {dob}", "Born: {dob}")
_HEADER_MRN = ("MRN: {mrn}", "Record no.: {mrn}", "Medical record number: {mrn}")
_HEADER_PHONE = ("Phone: {phone}", "Tel: {phone}", "Contact: {phone}")
_HEADER_ADDRESS = ("Address: {address}", "Home: {address}")
_VISIT = ("Seen on {date}.", "Visit date: {date}.", "Clinic visit {date}.", "Date of service: {date}.")
_INTRO = (
    "{name} (DOB {dob}, MRN {mrn}) presents for review.",
    "{name}, born {dob}, record {mrn}, came in today.",
    "Patient {name}, MRN {mrn}, date of birth {dob}, was seen in clinic.",
)
_MENTION = ("{name} presents for review.", "{name} came in today.", "Reviewed {name} in clinic.")
_CONTACT = (
    "Lives at {address}; reachable on {phone}.",
    "Contact {phone}. Address on file: {address}.",
    "Phone {phone}, home address {address}.",
)
_COMPLAINTS = (
    "Reports fatigue over the past weeks.",
    "Complains of intermittent symptoms since the last visit.",
    "No acute distress.",
    "Vitals stable.",
    "Denies chest pain or fever.",
)
_ASSESSMENT = (
    "Assessment: {diagnosis}.",
    "Impression: {diagnosis}.",
    "Dx: {diagnosis}.",
    "Consistent with {diagnosis}.",
)
_PLAN = (
    "Plan: start {medication} daily.",
    "Continue {medication}.",
    "Prescribed {medication}.",
    "Rx: {medication}.",
    "Started on {medication} once daily.",
)
_FOLLOW_UP = (
    "Follow up on {date}.",
    "Return to clinic {date}.",
    "Next appointment: {date}.",
    "Review again on {date}.",
)
_NO_FOLLOW_UP = ("Follow up as needed.", "No follow-up booked.", "Return if symptoms worsen.")


def fill(rng: random.Random, template: str) -> str:
    """`template` with each "#" replaced by a random digit and each "@" by a random capital letter."""
    return "".join(
        str(rng.randrange(10)) if c == "#" else rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") if c == "@" else c
        for c in template
    )


def make_note(rng: random.Random, sources: PhiSources = DEFAULT_PHI) -> tuple[str, dict[str, Any]]:
    """One clinical note with identifiers drawn from `sources`, and its reference record."""
    text, record, _ = note_with_phi(rng, sources)
    return text, record


def note_with_phi(
    rng: random.Random, sources: PhiSources = DEFAULT_PHI
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """`make_note`'s note and record, and its identifiers as the note writes them: name, dob, mrn, phone,
    address (what a check for leaked PHI looks for)."""
    name = f"{rng.choice(sources.first_names)} {rng.choice(sources.last_names)}"
    dob = random_date(rng, 1935, 2005)
    mrn = fill(rng, rng.choice(sources.mrn_formats))
    city, state = rng.choice(sources.cities)
    address = f"{rng.randint(1, 9999)} {rng.choice(sources.streets)}, {city}, {state} {fill(rng, '#####')}"
    phone = fill(rng, rng.choice(sources.phone_formats))
    diagnosis = rng.choice(list(DIAGNOSES))
    wordings, medications = DIAGNOSES[diagnosis]
    medication = rng.choice(medications)
    visit = random_date(rng, 2024, 2025)
    follow_up = None if rng.random() < 0.2 else visit + datetime.timedelta(days=rng.randint(7, 120))

    def date(day: datetime.date) -> str:
        return written_date(rng, day, sources.date_styles)

    phi = {"name": name, "dob": date(dob), "mrn": mrn, "phone": phone, "address": address}
    if rng.random() < 0.5:  # a header block, then the narrative
        header = [rng.choice(_HEADER_NAME), rng.choice(_HEADER_DOB), rng.choice(_HEADER_MRN)]
        header += [rng.choice(_HEADER_PHONE), rng.choice(_HEADER_ADDRESS)]
        opening = [*(line.format(**phi) for line in header), rng.choice(_MENTION).format(name=name)]
    else:  # all in prose
        opening = [rng.choice(_INTRO).format(**phi), rng.choice(_CONTACT).format(**phi)]
    clinical = [rng.choice(_COMPLAINTS), rng.choice(_ASSESSMENT).format(diagnosis=rng.choice(wordings))]
    clinical.append(rng.choice(_PLAN).format(medication=medication))
    if follow_up is None:
        clinical.append(rng.choice(_NO_FOLLOW_UP))
    else:
        clinical.append(rng.choice(_FOLLOW_UP).format(date=date(follow_up)))
    visit_line = rng.choice(_VISIT).format(date=date(visit))
    text = "\n".join([visit_line, *opening, " ".join(clinical)])
    record = {
        "patient": name,
        "dob": iso(dob),
        "mrn": mrn,
        "diagnosis": diagnosis,
        "medication": medication,
        "follow_up": None if follow_up is None else iso(follow_up),
    }
    return text, record, phi


def healthcare_task(sources: PhiSources = DEFAULT_PHI) -> ExampleTask:
    """The clinical-notes task with identifiers drawn from `sources`."""
    return ExampleTask(
        name="healthcare",
        description="clinical notes (synthetic PHI) → {patient, dob, mrn, diagnosis, medication, follow_up}",
        instruction=INSTRUCTION,
        fields=FIELDS,
        generate=partial(make_note, sources=sources),
    )


TASK = healthcare_task()
