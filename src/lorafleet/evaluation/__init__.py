"""Evaluation of adapter versions: held-out suites, the general-ability probe, forgetting across a lineage,
and the promotion gate.

`forgetting` and `gate` are pure functions over plain dicts (a version's `metrics`), torch-free, so the
registry and the API use them; `suites`, `probe` and `version` score a model (the worker's side). This
module imports none of them, so importing `lorafleet.evaluation.gate` never pulls torch in.
"""
