"""scale: telemetry rollups (downsampling tiers) and leader leases

Revision ID: 0005_scale
Revises: 0001
Create Date: 2026-11-23 19:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_scale'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'telemetry_rollup',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('resolution_s', sa.Integer(), nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('model_version', sa.String(length=128), nullable=False),
        sa.Column('bucket_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reports', sa.Integer(), nullable=False),
        sa.Column('frames', sa.Integer(), nullable=False),
        sa.Column('window_s', sa.Float(), nullable=False),
        sa.Column('inference_errors', sa.Integer(), nullable=False),
        sa.Column('camera_down_reports', sa.Integer(), nullable=False),
        sa.Column('confidence_sum', sa.Float(), nullable=False),
        sa.Column('confidence_frames', sa.Integer(), nullable=False),
        sa.Column('p95_latency_sum', sa.Float(), nullable=False),
        sa.Column('p95_latency_reports', sa.Integer(), nullable=False),
        sa.Column('p95_latency_max', sa.Float(), nullable=True),
        sa.Column('fps_sum', sa.Float(), nullable=False),
        sa.Column('cpu_percent_sum', sa.Float(), nullable=False),
        sa.Column('memory_mb_max', sa.Float(), nullable=False),
        sa.Column('class_counts', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('resolution_s', 'device_id', 'model_version', 'bucket_start',
                            name='uq_telemetry_rollup_key'),
    )
    with op.batch_alter_table('telemetry_rollup', schema=None) as batch_op:
        batch_op.create_index('ix_telemetry_rollup_device_id', ['device_id'], unique=False)
        batch_op.create_index('ix_telemetry_rollup_resolution_bucket', ['resolution_s', 'bucket_start'], unique=False)
    op.create_table(
        'leader_lease',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('term', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('leader_lease')
    with op.batch_alter_table('telemetry_rollup', schema=None) as batch_op:
        batch_op.drop_index('ix_telemetry_rollup_resolution_bucket')
        batch_op.drop_index('ix_telemetry_rollup_device_id')
    op.drop_table('telemetry_rollup')
