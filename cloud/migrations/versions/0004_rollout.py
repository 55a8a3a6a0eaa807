"""rollout engine: rollouts, their devices and decisions, device labels, rollout windows

Revision ID: 0004_rollout
Revises: 0001
Create Date: 2026-11-23 19:45:00
"""
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0004_rollout'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table('rollout',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    _ts('phase_started_at'),
    sa.Column('approved_stage', sa.Integer(), nullable=True),
    sa.Column('halted_strata', sa.JSON(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('baseline', sa.JSON(), nullable=False),
    sa.Column('evaluation', sa.JSON(), nullable=False),
    sa.Column('dispatch_budget', sa.Float(), nullable=False),
    _ts('budget_at'),
    _ts('created_at'),
    _ts('updated_at'),
    _ts('finished_at', nullable=True),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_rollout_state', 'rollout', ['state'])
    op.create_table('rollout_device',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('stratum', sa.String(length=160), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('package_id', sa.String(length=64), nullable=False),
    sa.Column('previous_package_id', sa.String(length=64), nullable=True),
    sa.Column('previous_model_version', sa.String(length=128), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    _ts('state_since'),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    _ts('dispatched_at', nullable=True),
    sa.Column('shadow_job_id', sa.String(length=64), nullable=True),
    sa.Column('restarts', sa.Integer(), nullable=False),
    sa.Column('last_online', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollout.id']),
    sa.ForeignKeyConstraint(['device_id'], ['device.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'device_id', name='uq_rollout_device'),
    )
    op.create_index('ix_rollout_device_rollout_state', 'rollout_device', ['rollout_id', 'state'])
    op.create_index('ix_rollout_device_device_id', 'rollout_device', ['device_id'])
    op.create_table('rollout_decision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=4000), nullable=False),
    sa.Column('numbers', sa.JSON(), nullable=False),
    _ts('created_at'),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollout.id']),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_rollout_decision_rollout_id', 'rollout_decision', ['rollout_id'])
    op.create_table('device_label',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id']),
    sa.PrimaryKeyConstraint('device_id', 'kind', 'value'),
    )
    op.create_table('rollout_window',
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    _ts('received_at'),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('invalid_outputs', sa.Integer(), nullable=False),
    sa.Column('shadow_package_id', sa.String(length=64), nullable=True),
    sa.Column('shadow_frames', sa.Integer(), nullable=False),
    sa.Column('shadow_agreements', sa.Integer(), nullable=False),
    sa.Column('shadow_errors', sa.Integer(), nullable=False),
    sa.Column('shadow_p95_latency_ms', sa.Float(), nullable=True),
    sa.Column('active_p95_latency_ms', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('message_id'),
    )
    op.create_index('ix_rollout_window_device_id', 'rollout_window', ['device_id'])
    op.create_index('ix_rollout_window_received_at', 'rollout_window', ['received_at'])


def downgrade() -> None:
    op.drop_table('rollout_window')
    op.drop_table('device_label')
    op.drop_table('rollout_decision')
    op.drop_table('rollout_device')
    op.drop_table('rollout')
