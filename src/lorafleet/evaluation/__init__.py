"""Evaluation of adapter versions: suites, forgetting along a lineage, and the promotion gate.

Pure functions over plain dicts (a version's `metrics`), so the registry, the API and the worker share
them without importing torch. Nothing here imports torch; scoring a model lives with the worker.
"""
