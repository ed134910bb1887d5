"""Persistence for the platform: tenants, keys, datasets, jobs, adapters, versions, aliases, adapter
events, canaries and A/B experiments (with the router that applies them), usage, and the request log
(completions served, their feedback).

SQLAlchemy 2 tables migrated by Alembic (SQLite by default, PostgreSQL by URL) and an artifact
store (a local directory by default, any fsspec URL). This package never imports torch.
"""

from lorafleet.registry.artifacts import ArtifactStore
from lorafleet.registry.database import Database, default_database_url
from lorafleet.registry.registry import Registry
from lorafleet.registry.tenants import Quotas, TenantSettings
from lorafleet.registry.usage import DayUsage, PriceTable

__all__ = [
    "ArtifactStore",
    "Database",
    "DayUsage",
    "PriceTable",
    "Quotas",
    "Registry",
    "TenantSettings",
    "default_database_url",
]
