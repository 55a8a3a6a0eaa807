"""telemetry: the device's report sequence number (report_seq), so a lost window shows as a gap

Revision ID: 0008_report_seq
Revises: 0001
Create Date: 2026-12-05 14:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008_report_seq'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_seq', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.drop_column('report_seq')
