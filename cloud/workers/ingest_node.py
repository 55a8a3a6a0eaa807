"""An ingest-only control-plane node: ``python -m cloud.workers.ingest_node``.

Run several against one PostgreSQL and one broker to scale ingest out::

    EDGEFLEET_DATABASE_URL=postgresql+psycopg://... EDGEFLEET_MQTT_URL=mqtt://broker:1883 \\
    EDGEFLEET_INGEST_SHARED_GROUP=ef-ingest EDGEFLEET_INGEST_CLIENT_ID=ingest-1 \\
    python -m cloud.workers.ingest_node

Each node needs its own stable ``EDGEFLEET_INGEST_CLIENT_ID``: the broker keeps that
session (and the reports addressed to it) while the node restarts. Settings come from
the environment like the full control plane's (:class:`cloud.core.config.Settings`);
the API runs elsewhere (``edgefleet serve``), and the nodes elect one of themselves
for retention through the database. SIGTERM stops cleanly (queued reports are stored
and acknowledged first); SIGKILL loses nothing either, it only causes redeliveries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from agent.contract import Topics
from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.messaging.wiring import make_bridge, make_ingest, make_retention

log = logging.getLogger("cloud.workers.ingest_node")


class IngestNode:
    def __init__(self, settings: Settings) -> None:
        if not settings.mqtt_url:
            raise ValueError("an ingest node needs EDGEFLEET_MQTT_URL (it never starts an embedded broker)")
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url)
        self.topics = Topics(settings.topic_prefix)
        self.ingest = make_ingest(self.engine, self.topics, settings)
        self.mqtt = make_bridge(settings, self.topics, broker_url=settings.mqtt_url, ingest=self.ingest)
        holder = settings.ingest_client_id or f"ingest-{socket.gethostname()}-{os.getpid()}"
        self.retention = make_retention(self.engine, settings, holder=holder)

    def start(self, timeout_s: float = 30.0) -> None:
        self.ingest.start()
        self.mqtt.start(timeout_s)
        if self.retention is not None:
            self.retention.start()

    def stop(self) -> None:
        if self.retention is not None:
            self.retention.stop()
        self.ingest.stop()
        self.mqtt.stop()
        self.engine.dispose()

    def status(self) -> dict[str, object]:
        return {"pid": os.getpid(), "connected": self.mqtt.connected.is_set(), **self.ingest.counters.as_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an ingest-only EdgeFleet node (settings from EDGEFLEET_*).")
    parser.add_argument("--migrate", action="store_true", help="upgrade the schema first (run on one node only)")
    parser.add_argument("--status-file", type=Path, default=None,
                        help="write counters as JSON here every --status-interval seconds")
    parser.add_argument("--status-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Two busy threads share the GIL here (network and database writer); a thread that
    # gives the GIL up for a socket read waits a whole switch interval to get it back.
    # 1 ms instead of 5 ms keeps the network thread draining its socket under load.
    sys.setswitchinterval(0.001)
    settings = Settings()
    if args.migrate:
        migrate(settings.resolved_database_url)
    node = IngestNode(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node.start()

    def write_status() -> None:
        if args.status_file is not None:
            tmp = args.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(node.status()))
            os.replace(tmp, args.status_file)

    write_status()
    while not stop.wait(args.status_interval):
        write_status()
    node.stop()
    write_status()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
