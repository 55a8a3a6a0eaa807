"""governance: the label history of each sample (who, when, old label -> new label)

Revision ID: label19_label_history
Revises: 0001
Create Date: 2026-12-05 18:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'label19_label_history'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sample_label_change',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sample_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('old_label', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('new_label', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('old_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('new_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_sample_label_change_sample_id'), 'sample_label_change', ['sample_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_sample_label_change_sample_id'), table_name='sample_label_change')
    op.drop_table('sample_label_change')
