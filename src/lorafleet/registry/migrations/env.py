"""Alembic environment: runs the registry's migrations on the connection `database.migrate` hands over."""

from __future__ import annotations

from alembic import context

from lorafleet.registry.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: take the URL from the ini file or the environment
    from lorafleet.registry.database import connect, default_database_url

    url = context.config.get_main_option("sqlalchemy.url") or default_database_url()
    with connect(url).begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
