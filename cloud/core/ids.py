"""Patterns for the ids that end up in filesystem paths.

Every id a caller can send (dataset, package, model version, sample) is checked
against one of these before it is joined to a directory: none of them can hold a
path separator or start with a dot, so ``../`` and absolute paths never reach the disk.
"""

from __future__ import annotations

import re

__all__ = ["DATASET_ID", "SAFE_ID", "SAMPLE_ID", "check_dataset_id"]

# Content addresses from cloud.pipeline.data.dataset.dataset_id_for.
DATASET_ID = r"^ds-[0-9a-f]{16}$"
# Model versions ("shapes-3"), package ids ("shapes-3-<hash>"), build ids, package file names.
SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
# As the device contract defines sample ids.
SAMPLE_ID = r"^[A-Za-z0-9_-]{1,64}$"

_DATASET_ID = re.compile(DATASET_ID)


def check_dataset_id(dataset_id: str) -> str:
    """``dataset_id`` unchanged, or ``ValueError`` saying what a dataset id looks like."""
    if not _DATASET_ID.match(dataset_id):
        raise ValueError(f"dataset_id {dataset_id[:80]!r} is not a dataset id: expected 'ds-' and 16 hex digits, "
                         "as `edgefleet data list` shows")
    return dataset_id
