"""per-camera telemetry, drift windows, samples and alerts; a drift detector per camera

Revision ID: camviews_camera_columns
Revises: 0006_monitor
Create Date: 2026-12-06 00:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'camviews_camera_columns'
# Alters the monitor's tables, so it follows the migration that made them.
down_revision: str | None = '0006_monitor'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _camera() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column('camera', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.add_column(_camera())
        batch_op.add_column(sa.Column('capture_to_result_p95_ms', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('stale_frames_dropped', sa.Integer(), nullable=True))
    for table in ('drift_window', 'sample', 'drift_alert'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(_camera())
    # The sequential test was kept per device and package, so two cameras' windows stepped one
    # statistic. A table keyed by camera replaces it; tests start afresh (a few windows).
    op.drop_table('drift_detector')
    op.create_table('drift_camera_detector',
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('camera', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('statistic', sa.Float(), nullable=False),
    sa.Column('alarm', sa.Boolean(), nullable=False),
    sa.Column('clean_run', sa.Integer(), nullable=False),
    sa.Column('clean_streak', sa.Integer(), nullable=False),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'camera', 'package_id')
    )


def downgrade() -> None:
    op.drop_table('drift_camera_detector')
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
    for table in ('drift_alert', 'sample', 'drift_window'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('camera')
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.drop_column('stale_frames_dropped')
        batch_op.drop_column('capture_to_result_p95_ms')
        batch_op.drop_column('camera')
