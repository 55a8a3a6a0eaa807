"""monitor: drift windows, detectors, alerts, samples; governance: audit, proposals, dataset lineage

Revision ID: 0006_monitor
Revises: 0001
Create Date: 2026-11-23 19:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0006_monitor'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('subject_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('subject_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_audit_event_action'), 'audit_event', ['action'], unique=False)
    op.create_index(op.f('ix_audit_event_at'), 'audit_event', ['at'], unique=False)
    op.create_index(op.f('ix_audit_event_subject_id'), 'audit_event', ['subject_id'], unique=False)
    op.create_table('dataset_lineage',
    sa.Column('dataset_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('parent_dataset_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('sample_ids', sa.JSON(), nullable=False),
    sa.Column('device_ids', sa.JSON(), nullable=False),
    sa.Column('store_path', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('proposal_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('dataset_id')
    )
    op.create_table('drift_alert',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cleared_reason', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('window_ids', sa.JSON(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('proposal_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_drift_alert_device_id'), 'drift_alert', ['device_id'], unique=False)
    op.create_index(op.f('ix_drift_alert_state'), 'drift_alert', ['state'], unique=False)
    op.create_table('drift_detector',
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('statistic', sa.Float(), nullable=False),
    sa.Column('alarm', sa.Boolean(), nullable=False),
    sa.Column('clean_run', sa.Integer(), nullable=False),
    sa.Column('clean_streak', sa.Integer(), nullable=False),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'package_id')
    )
    op.create_table('drift_window',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('window_seq', sa.Integer(), nullable=False),
    sa.Column('window_started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_ended_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('frames_seen', sa.Integer(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('histograms', sa.Text(), nullable=False),
    sa.Column('means', sa.JSON(), nullable=False),
    sa.Column('stds', sa.JSON(), nullable=False),
    sa.Column('class_counts', sa.JSON(), nullable=False),
    sa.Column('local_score', sa.Float(), nullable=True),
    sa.Column('tested', sa.Boolean(), nullable=False),
    sa.Column('untested_reason', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('p_value', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('cusum', sa.Float(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', name='uq_drift_window_message_id')
    )
    op.create_index(op.f('ix_drift_window_device_id'), 'drift_window', ['device_id'], unique=False)
    op.create_index(op.f('ix_drift_window_package_id'), 'drift_window', ['package_id'], unique=False)
    op.create_index(op.f('ix_drift_window_received_at'), 'drift_window', ['received_at'], unique=False)
    op.create_table('retraining_proposal',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('base_model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('base_package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('base_dataset_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('alert_ids', sa.JSON(), nullable=False),
    sa.Column('device_ids', sa.JSON(), nullable=False),
    sa.Column('new_dataset_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('new_model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('new_package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('validation', sa.JSON(), nullable=False),
    sa.Column('rollout_proposal_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_retraining_proposal_state'), 'retraining_proposal', ['state'], unique=False)
    op.create_table('rollout_proposal',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('retraining_proposal_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_ids', sa.JSON(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('auto_approved', sa.Boolean(), nullable=False),
    sa.Column('decided_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rollout_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('deployment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_rollout_proposal_state'), 'rollout_proposal', ['state'], unique=False)
    op.create_table('sample',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sample_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sampler', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('predicted_label', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('stats_only', sa.Boolean(), nullable=False),
    sa.Column('image_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('image_bytes', sa.Integer(), nullable=False),
    sa.Column('image_width', sa.Integer(), nullable=False),
    sa.Column('image_height', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('label', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('labelled_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('labelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', name='uq_sample_message_id'),
    sa.UniqueConstraint('sample_id', name='uq_sample_sample_id')
    )
    op.create_index(op.f('ix_sample_device_id'), 'sample', ['device_id'], unique=False)
    op.create_index(op.f('ix_sample_image_sha256'), 'sample', ['image_sha256'], unique=False)
    op.create_index(op.f('ix_sample_received_at'), 'sample', ['received_at'], unique=False)
    op.create_index(op.f('ix_sample_status'), 'sample', ['status'], unique=False)
    op.create_table('sample_blob',
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_index(op.f('ix_sample_blob_created_at'), 'sample_blob', ['created_at'], unique=False)
    op.create_index(op.f('ix_sample_blob_device_id'), 'sample_blob', ['device_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_sample_blob_device_id'), table_name='sample_blob')
    op.drop_index(op.f('ix_sample_blob_created_at'), table_name='sample_blob')
    op.drop_table('sample_blob')
    op.drop_index(op.f('ix_sample_status'), table_name='sample')
    op.drop_index(op.f('ix_sample_received_at'), table_name='sample')
    op.drop_index(op.f('ix_sample_image_sha256'), table_name='sample')
    op.drop_index(op.f('ix_sample_device_id'), table_name='sample')
    op.drop_table('sample')
    op.drop_index(op.f('ix_rollout_proposal_state'), table_name='rollout_proposal')
    op.drop_table('rollout_proposal')
    op.drop_index(op.f('ix_retraining_proposal_state'), table_name='retraining_proposal')
    op.drop_table('retraining_proposal')
    op.drop_index(op.f('ix_drift_window_received_at'), table_name='drift_window')
    op.drop_index(op.f('ix_drift_window_package_id'), table_name='drift_window')
    op.drop_index(op.f('ix_drift_window_device_id'), table_name='drift_window')
    op.drop_table('drift_window')
    op.drop_table('drift_detector')
    op.drop_index(op.f('ix_drift_alert_state'), table_name='drift_alert')
    op.drop_index(op.f('ix_drift_alert_device_id'), table_name='drift_alert')
    op.drop_table('drift_alert')
    op.drop_table('dataset_lineage')
    op.drop_index(op.f('ix_audit_event_subject_id'), table_name='audit_event')
    op.drop_index(op.f('ix_audit_event_at'), table_name='audit_event')
    op.drop_index(op.f('ix_audit_event_action'), table_name='audit_event')
    op.drop_table('audit_event')
