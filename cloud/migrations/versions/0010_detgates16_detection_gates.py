"""rollouts: detection windows and shadow box matches for the gates; samples keep their boxes

Revision ID: detgates16_detection_gates
Revises: 0004_rollout (rollout_window), and needs 0006_monitor (sample)
Create Date: 2026-12-05 21:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'detgates16_detection_gates'
# Columns added to tables of two features: after the rollout tables, and after the monitor's.
down_revision: str | None = '0004_rollout'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = '0006_monitor'

_ROLLOUT_WINDOW_COUNTS = ('detection_frames', 'detection_boxes', 'shadow_boxes_active', 'shadow_boxes_candidate',
                          'shadow_boxes_matched')


def upgrade() -> None:
    for name in _ROLLOUT_WINDOW_COUNTS:
        op.add_column('rollout_window', sa.Column(name, sa.Integer(), nullable=False, server_default='0'))
    op.add_column('rollout_window', sa.Column('detection_mean_box_score', sa.Float(), nullable=True))
    op.add_column('rollout_window', sa.Column('detection_object_counts', sa.JSON(), nullable=False,
                                              server_default=sa.text("'{}'")))
    op.add_column('sample', sa.Column('boxes', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column('sample', 'boxes')
    op.drop_column('rollout_window', 'detection_object_counts')
    op.drop_column('rollout_window', 'detection_mean_box_score')
    for name in reversed(_ROLLOUT_WINDOW_COUNTS):
        op.drop_column('rollout_window', name)
