"""Evaluation of adapter versions: held-out suites, the general-ability probe, forgetting across a lineage."""
