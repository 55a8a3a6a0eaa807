"""device: the broker URL the device was last given (at enrollment, or when it asked for the current one)

Revision ID: fleet19_0009_device_broker
Revises: 0001
Create Date: 2026-12-05 18:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'fleet19_0009_device_broker'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mqtt_url', sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_column('mqtt_url')
