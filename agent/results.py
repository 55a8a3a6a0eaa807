"""Per-frame results for local consumers: a JSON-lines file (rotated at a size limit)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO

from agent.infer.engine import FrameResult


class JsonLinesSink:
    """Appends one JSON object per processed frame; rotates to ``<name>.1`` past ``max_bytes``.

    Lines are flushed every ``flush_every_lines`` so a reader tailing the file sees
    results promptly without a syscall per frame.
    """

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024, flush_every_lines: int = 10) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.flush_every_lines = flush_every_lines
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("a", encoding="utf-8")
        self._written = path.stat().st_size
        self._unflushed = 0

    def emit(self, result: FrameResult) -> None:
        line = json.dumps(result.to_json_dict(), separators=(",", ":")) + "\n"
        with self._lock:
            if self._written + len(line) > self.max_bytes:
                self._handle.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._handle = self.path.open("a", encoding="utf-8")
                self._written = 0
            self._handle.write(line)
            self._written += len(line)
            self._unflushed += 1
            if self._unflushed >= self.flush_every_lines:
                self._handle.flush()
                self._unflushed = 0

    def close(self) -> None:
        with self._lock:
            self._handle.close()
