"""device cameras: each device's desired cameras, and the camera set it reports running

Revision ID: cameras17_0011_device_cameras
Revises: 0001
Create Date: 2026-12-05 21:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'cameras17_0011_device_cameras'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('device_camera',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
    sa.Column('target_fps', sa.Float(), nullable=False),
    sa.Column('region', sa.JSON(), nullable=True),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('rtsp_transport', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'name', name='uq_device_camera_name')
    )
    op.create_index(op.f('ix_device_camera_device_id'), 'device_camera', ['device_id'], unique=False)
    op.create_table('device_camera_set',
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('desired_revision', sa.Integer(), nullable=False),
    sa.Column('last_job_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_revision', sa.Integer(), nullable=True),
    sa.Column('rejected_revision', sa.Integer(), nullable=True),
    sa.Column('error_code', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('reported', sa.JSON(), nullable=False),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.PrimaryKeyConstraint('device_id')
    )


def downgrade() -> None:
    op.drop_table('device_camera_set')
    op.drop_index(op.f('ix_device_camera_device_id'), table_name='device_camera')
    op.drop_table('device_camera')
