"""governance: box labels of detection samples, and boxes in the label history

Revision ID: detretrain_box_labels
Revises: label19_label_history
Create Date: 2026-12-06 00:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'detretrain_box_labels'
down_revision: str | None = 'label19_label_history'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sample_box_label',
    sa.Column('sample_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('boxes', sa.JSON(), nullable=False),
    sa.Column('labelled_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('labelled_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sample_id')
    )
    op.add_column('sample_label_change', sa.Column('old_boxes', sa.JSON(), nullable=True))
    op.add_column('sample_label_change', sa.Column('new_boxes', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('sample_label_change', 'new_boxes')
    op.drop_column('sample_label_change', 'old_boxes')
    op.drop_table('sample_box_label')
