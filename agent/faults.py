"""Fault-injection hooks for the table-driven fault tests (never set them in production).

* ``EDGEFLEET_AGENT_CRASH_AT=<state>[@<model_version>][,...]``: the agent calls
  ``os._exit`` right after it has persisted the named install state, before doing
  that step (only while installing ``<model_version>`` when one is given).
  To the state machine this is indistinguishable from ``kill -9`` or a power cut
  at that point, which is what the tests need to reproduce deterministically.
* ``EDGEFLEET_AGENT_FAIL_WRITE_AT=<point>[@<model_version>]``: file writes at the
  named point (``stage``) raise ``OSError(ENOSPC)``, as a full or failing disk would.
* ``EDGEFLEET_AGENT_SEGFAULT_AT=<point>[@<model_version>]``: the process kills itself with
  SIGSEGV at the named point (``load``: loading a model from its slot at start-up), as a
  runtime that dereferences a bad pointer in a model's kernels would.

Both are read from the environment on every call so a test can set them per process.
"""

from __future__ import annotations

import errno
import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_ENV = "EDGEFLEET_AGENT_CRASH_AT"
FAIL_WRITE_ENV = "EDGEFLEET_AGENT_FAIL_WRITE_AT"
SEGFAULT_ENV = "EDGEFLEET_AGENT_SEGFAULT_AT"
CRASH_EXIT_CODE = 86


def _named(env_name: str, point: str, qualifier: str) -> bool:
    value = os.environ.get(env_name, "")
    entries = {part.strip() for part in value.split(",") if part.strip()}
    return point in entries or f"{point}@{qualifier}" in entries


def crash_point(point: str, qualifier: str = "") -> None:
    """Exit the process at once (no cleanup, no flush) when ``point`` is named in the env."""
    if _named(CRASH_ENV, point, qualifier):
        log.critical("fault injection: crashing at %s", point)
        os._exit(CRASH_EXIT_CODE)


def fail_write_point(point: str, qualifier: str = "") -> None:
    """Raise ``OSError(ENOSPC)`` when ``point`` is named in the env.

    Raises:
        OSError: the fault is injected.
    """
    if _named(FAIL_WRITE_ENV, point, qualifier):
        raise OSError(errno.ENOSPC, f"fault injection: write failure at {point}")


def segfault_point(point: str, qualifier: str = "") -> None:
    """Die of a real SIGSEGV (no handler, no cleanup) when ``point`` is named in the env."""
    if _named(SEGFAULT_ENV, point, qualifier):
        log.critical("fault injection: segmentation fault at %s", point)
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
