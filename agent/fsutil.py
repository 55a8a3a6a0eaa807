"""Atomic file writes: every file the device keeps is replaced, never rewritten in place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, document: Any) -> None:
    atomic_write_bytes(path, json.dumps(document, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any:
    """Return the parsed file, or ``None`` when it does not exist or is corrupt."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
