"""Scrubbing rows: pseudonyms consistent within a document and different across documents, PHI in a
skipped field reported, and `lorafleet data scrub` end to end with its validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.errors import DataError
from lorafleet.privacy.audit import verify_report
from lorafleet.privacy.scrub import FieldChoice, report_path, scrub_jsonl, scrub_row
from tests.helpers import invoke

SECRET = b"test secret"
NOTE = (
    "Patient Ifeoma Brandvold (MRN: 55102938) seen on 2024-02-11. Mrs. Brandvold reports dizziness. "
    "Her son, Teodor Brandvold, can be reached at 312-555-0187."
)


def row(note: str, patient: str) -> dict[str, str]:
    return {"prompt": note, "completion": json.dumps({"patient": patient})}


def test_pseudonyms_are_consistent_within_a_document() -> None:
    scrubbed, counts, _ = scrub_row(row(NOTE, "Ifeoma Brandvold"), SECRET, FieldChoice())
    text, answer = scrubbed["prompt"], json.loads(scrubbed["completion"])["patient"]
    for value in ("Ifeoma", "Brandvold", "Teodor", "55102938", "312-555-0187", "2024-02-11"):
        assert value not in text and value not in scrubbed["completion"]
    first, last = answer.split()
    assert f"Patient {first} {last} " in text  # the note and the answer name the same fake patient
    assert f"Mrs. {last} reports" in text  # the bare last name keeps the same fake
    assert ", Teodor" not in text and text.count(last) == 3  # the son shares the fake family name
    assert {c.entity_type for c in counts} >= {"PERSON", "MEDICAL_RECORD_NUMBER", "PHONE_NUMBER", "DATE_TIME"}


def test_pseudonyms_differ_across_documents_and_repeat_with_the_secret() -> None:
    names = ["Ifeoma Brandvold", "Ifeoma Brandvold", "Ifeoma Brandvold"]
    notes = [NOTE, NOTE + " Plan reviewed.", NOTE + " Discharged home."]  # same patient, three documents
    fakes = [
        json.loads(scrub_row(row(n, p), SECRET, FieldChoice())[0]["completion"])["patient"]
        for n, p in zip(notes, names, strict=True)
    ]
    assert len(set(fakes)) == 3
    again = json.loads(scrub_row(row(notes[0], names[0]), SECRET, FieldChoice())[0]["completion"])["patient"]
    assert again == fakes[0]
    other = json.loads(scrub_row(row(notes[0], names[0]), b"another", FieldChoice())[0]["completion"])
    assert other["patient"] != fakes[0]


def test_phi_in_a_skipped_field_is_reported_not_passed(tmp_path: Path) -> None:
    source = tmp_path / "notes.jsonl"
    rows = [row(NOTE, "Ifeoma Brandvold") | {"comment": "Call Mr. Oyelaran Petrakis at 415-555-0102"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("data", "scrub", str(source), str(tmp_path / "out.jsonl"), "--skip-fields", "comment")
    assert result.exit_code == 0, result.output
    assert "left in skipped field 'comment'" in result.output
    report = json.loads(report_path(tmp_path / "out.jsonl").read_text())
    assert report["unscrubbed"] == {"comment:PERSON": 1, "comment:PHONE_NUMBER": 1}
    written = json.loads((tmp_path / "out.jsonl").read_text())
    assert written["comment"] == rows[0]["comment"]  # left as asked
    assert "Brandvold" not in written["prompt"]
    assert "Brandvold" not in json.dumps(report)  # counts only, never a raw value
    assert verify_report(report) == []


def test_scrub_writes_nothing_when_a_row_is_bad(tmp_path: Path) -> None:
    source = tmp_path / "notes.jsonl"
    source.write_text(json.dumps(row(NOTE, "x")) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"notes.jsonl:2: a JSON list"):
        scrub_jsonl(source, tmp_path / "out.jsonl", choice=FieldChoice())
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.scrub.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fields", "nope"], "no row has field nope"),
        (["--fields", "prompt", "--skip-fields", "prompt"], "both name prompt"),
    ],
)
def test_cli_names_the_bad_field(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "notes.jsonl"
    source.write_text(json.dumps(row(NOTE, "x")) + "\n")
    result = invoke("data", "scrub", str(source), str(tmp_path / "out.jsonl"), *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_missing_input_and_existing_output(tmp_path: Path) -> None:
    missing = invoke("data", "scrub", str(tmp_path / "none.jsonl"), str(tmp_path / "out.jsonl"))
    assert missing.exit_code != 0 and "none.jsonl: no such file" in missing.output
    source = tmp_path / "notes.csv"
    source.write_text("a\n1\n")
    assert "reads .jsonl files" in invoke("data", "scrub", str(source), str(tmp_path / "o.jsonl")).output
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text(json.dumps(row(NOTE, "x")) + "\n")
    (tmp_path / "out.jsonl").write_text("keep me\n")
    existing = invoke("data", "scrub", str(jsonl), str(tmp_path / "out.jsonl"))
    assert existing.exit_code != 0 and "already exists" in existing.output
    assert (tmp_path / "out.jsonl").read_text() == "keep me\n"


def test_a_name_at_a_line_start_before_born_is_found_in_a_plain_text_row() -> None:
    # a text row has no answer naming the patient: the note's own words must give the name away
    note = "Date of service: Sunday, August 11, 2024.\nFelix Ferreira, born 1951-12-10, came in today."
    scrubbed, counts, _ = scrub_row({"text": note}, SECRET, FieldChoice())
    assert "Felix" not in scrubbed["text"] and "Ferreira" not in scrubbed["text"]
    assert "PERSON" in {c.entity_type for c in counts}
