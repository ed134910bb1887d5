"""PHI/PII scrubbing with an audit trail (the `privacy` extra: Presidio's analyzer and anonymizer).

`scrub.scrub_jsonl` scrubs a dataset (`lorafleet data scrub`), `scrub.scrub_row` one document;
`analyzer` finds the PHI offline, `pseudonyms` makes the consistent fakes, `audit` chains the report.
Presidio is imported inside the functions that use it, so `import lorafleet` needs only the core.
"""
