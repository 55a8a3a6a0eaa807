"""Drift monitoring in the control plane: references, window tests, alerts, retention.

Pure parts: :mod:`cloud.monitor.stats` (tests, CUSUM) and :mod:`cloud.monitor.reference`
(building a package's reference). I/O parts: :mod:`cloud.monitor.service` (ingest
handlers, alerts, fleet test) and :mod:`cloud.monitor.retention`. See docs/drift.md.
"""
