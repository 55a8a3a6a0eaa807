"""Alembic environment: migrations run from code (``cloud.core.db.migrate``) or the CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import cloud.fleet.camera_tables
import cloud.fleet.tables

# Importing the table modules registers their tables on SQLModel.metadata.
import cloud.governance.tables
import cloud.jobs.tables
import cloud.monitor.tables
import cloud.pipeline.registry.tables
import cloud.rollout.tables
import cloud.security.tables
import cloud.workers.tables  # noqa: F401

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # Batch mode lets ALTER TABLE migrations work on SQLite too.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
