"""Keep the server log for what people do: drop access-log lines of the pollers.

Each open dashboard tab refreshes its live fragments (``?partial=1``) every two
seconds and Prometheus scrapes ``/metrics``: at INFO, their access-log lines would
bury operator actions and errors. This filter on uvicorn's access logger drops
successful polls only; a failed poll (4xx/5xx), a full page load, and every other
request are still logged.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

__all__ = ["ACCESS_LOGGER", "QuietPollsFilter", "install_access_log_filter", "is_poll"]

ACCESS_LOGGER = "uvicorn.access"


def is_poll(method: str, path: str) -> bool:
    """A dashboard live refresh or a metrics scrape: a read that repeats on a timer."""
    if method not in ("GET", "HEAD"):
        return False
    parts = urlsplit(path)
    if parts.path == "/metrics":
        return True
    return parts.path.startswith("/ui/") and parse_qs(parts.query).get("partial") == ["1"]


class QuietPollsFilter(logging.Filter):
    """Drops uvicorn access records (``client, method, path, http_version, status``) of successful polls."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 5:
            return True
        method, path, status = args[1], args[2], args[4]
        try:
            failed = int(status) >= 400  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return True
        return failed or not is_poll(str(method), str(path))


def install_access_log_filter() -> None:
    """Add the filter to uvicorn's access logger once (uvicorn's own logging setup keeps logger filters)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QuietPollsFilter) for f in logger.filters):
        logger.addFilter(QuietPollsFilter())
