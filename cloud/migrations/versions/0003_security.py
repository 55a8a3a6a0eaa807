"""security: API tokens, enrollment tokens, device certificates

Revision ID: 0003_security
Revises: 0001
Create Date: 2026-11-23 19:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0003_security'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_token',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('token_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_api_token_token_sha256'), 'api_token', ['token_sha256'], unique=True)
    op.create_index(op.f('ix_api_token_device_id'), 'api_token', ['device_id'], unique=False)
    op.create_table('enrollment_token',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hardware_profile', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('token_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_enrollment_token_token_sha256'), 'enrollment_token', ['token_sha256'], unique=True)
    op.create_index(op.f('ix_enrollment_token_device_id'), 'enrollment_token', ['device_id'], unique=False)
    op.create_table('device_certificate',
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('not_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('serial')
    )
    op.create_index(op.f('ix_device_certificate_device_id'), 'device_certificate', ['device_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_device_certificate_device_id'), table_name='device_certificate')
    op.drop_table('device_certificate')
    op.drop_index(op.f('ix_enrollment_token_device_id'), table_name='enrollment_token')
    op.drop_index(op.f('ix_enrollment_token_token_sha256'), table_name='enrollment_token')
    op.drop_table('enrollment_token')
    op.drop_index(op.f('ix_api_token_device_id'), table_name='api_token')
    op.drop_index(op.f('ix_api_token_token_sha256'), table_name='api_token')
    op.drop_table('api_token')
