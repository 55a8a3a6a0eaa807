"""monitor: per-camera drift baselines, learnt from a camera's first windows and confirmed by an operator

Revision ID: drift19_camera_baseline
Revises: 0001
Create Date: 2026-12-05 18:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'drift19_camera_baseline'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('drift_baseline',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('camera', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('window_ids', sa.JSON(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('class_counts', sa.JSON(), nullable=False),
    sa.Column('mean_sums', sa.JSON(), nullable=False),
    sa.Column('square_sums', sa.JSON(), nullable=False),
    sa.Column('k', sa.Float(), nullable=True),
    sa.Column('loo_scores', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('confirmed_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'camera', 'package_id', name='uq_drift_baseline_camera')
    )
    op.create_index(op.f('ix_drift_baseline_device_id'), 'drift_baseline', ['device_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_drift_baseline_device_id'), table_name='drift_baseline')
    op.drop_table('drift_baseline')
