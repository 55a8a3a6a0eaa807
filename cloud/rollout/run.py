"""A rollout engine as its own process (``edgefleet rollout engine``).

Run one next to each control plane, or several against one PostgreSQL: rollout rows
are locked with ``FOR UPDATE SKIP LOCKED``, so replicas never dispatch a device twice.
Commands are signed with the control plane's director key (same ``data_dir``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import uuid

from agent.contract import Topics
from cloud.core.config import Settings
from cloud.core.db import make_engine
from cloud.messaging.wiring import make_bridge
from cloud.rollout.engine import EngineConfig, RolloutEngine
from cloud.security import FleetSecurity

__all__ = ["main", "run_engine"]

log = logging.getLogger(__name__)


def run_engine(settings: Settings, *, base_url: str, tick_s: float = 1.0, name: str | None = None,
               stop: threading.Event | None = None) -> None:
    """Drive rollouts until ``stop`` is set (or SIGTERM/SIGINT in the main thread)."""
    name = name or f"engine-{uuid.uuid4().hex[:6]}"
    db = make_engine(settings.resolved_database_url)
    security = FleetSecurity(settings, db)
    # This process only publishes; the control plane's ingest stores the reports.
    mqtt = make_bridge(settings, Topics(settings.topic_prefix), broker_url=settings.mqtt_url or "",
                       client_id=f"ef-rollout-{name}", sign=security.sign_command)
    mqtt.start()
    engine = RolloutEngine(db, mqtt.publish_command, base_url, name=name,
                           config=EngineConfig(tick_s=tick_s, command_ttl_s=settings.command_ttl_s))
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine.start()
    log.info("rollout engine %s running against %s", name, settings.topic_prefix)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
        mqtt.stop()
        db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--topic-prefix", default="ef/v1")
    parser.add_argument("--data-dir", required=True, help="the control plane's data directory (director key)")
    parser.add_argument("--base-url", required=True, help="where devices download packages")
    parser.add_argument("--tick-s", type=float, default=1.0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=args.data_dir, database_url=args.database_url, mqtt_url=args.mqtt_url,
                        topic_prefix=args.topic_prefix)
    run_engine(settings, base_url=args.base_url, tick_s=args.tick_s, name=args.name)


if __name__ == "__main__":
    main()
