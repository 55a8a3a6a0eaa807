"""monitor: a detection package's drift window keeps its detection block (box histograms, objects per class)

Revision ID: detdrift_window_detection
Revises: 0006_monitor
Create Date: 2026-12-06 00:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'detdrift_window_detection'
down_revision: str | None = '0006_monitor'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('drift_window', sa.Column('detection', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('drift_window', 'detection')
