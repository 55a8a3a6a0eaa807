"""inputs: api_token.expires_at and the dashboard_session table

Revision ID: inputs_0009_token_expiry
Revises: 0003_security
Create Date: 2026-12-05 18:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = 'inputs_0009_token_expiry'
# After 0003_security, which creates api_token (the table this alters and references).
down_revision: str | None = '0003_security'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_token') as batch:
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('dashboard_session',
    sa.Column('id_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('token_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['api_token.id'], ),
    sa.PrimaryKeyConstraint('id_sha256')
    )
    op.create_index(op.f('ix_dashboard_session_token_id'), 'dashboard_session', ['token_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_dashboard_session_token_id'), table_name='dashboard_session')
    op.drop_table('dashboard_session')
    with op.batch_alter_table('api_token') as batch:
        batch.drop_column('expires_at')
