"""The control plane's MQTT client keeps its socket drained while other threads hold the GIL.

Mosquitto 2.0 drops QoS 1 messages for a subscriber once more than ``max_queued_messages``
(default 1000) wait to be written to its socket, even within the subscriber's Receive
Maximum and after acknowledging them to the publisher: a control plane that reads slowly
loses acknowledged reports. Here a thread busy in pure Python stands for ingest's writer
(parsing reports), and a separate process publishes 20,000 QoS 1 messages as fast as the
broker takes them; every one must reach the bridge. With paho's stock reads (a few bytes
per ``recv``, each retaking the GIL) about two thirds were dropped.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.contract import Topics
from cloud.core.config import Settings
from cloud.messaging.bridge import CloudMqtt
from tests.support.services import wait_for

MESSAGES = 20_000

PUBLISHER = r"""
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.max_inflight_messages_set(1000)
client.max_queued_messages_set(0)
client.connect(host, port)
client.loop_start()
infos = [client.publish(topic, b"r" * 300, qos=1) for _ in range(count)]
for info in infos:
    info.wait_for_publish(120)
client.disconnect()
print(sum(info.is_published() for info in infos))
"""


def test_every_qos1_report_arrives_while_another_thread_holds_the_gil(mqtt_url: str, topic_prefix: str,
                                                                        tmp_path: Path) -> None:
    from agent.contract.broker_url import parse_broker_url

    topics = Topics(topic_prefix)
    received: list[int] = []
    lock = threading.Lock()

    def on_report(topic: str, payload: bytes, ack: object, qos: int) -> None:
        with lock:
            received.append(len(payload))
        ack()

    bridge = CloudMqtt(mqtt_url, topics, lambda t, p: None, on_report_acked=on_report, protocol="5",
                       receive_maximum=65_535)
    bridge.start()
    busy = threading.Event()
    busy.set()

    def hold_the_gil() -> None:  # what ingest's writer thread does while it parses a batch
        total = 0
        while busy.is_set():
            for value in range(10_000):
                total += value * value

    writer = threading.Thread(target=hold_the_gil, daemon=True)
    writer.start()
    address = parse_broker_url(mqtt_url)
    try:
        published = subprocess.run(
            [sys.executable, "-c", PUBLISHER, address.host, str(address.port), topics.telemetry("cam-1"),
             str(MESSAGES)], capture_output=True, text=True, timeout=300, check=True)
        assert int(published.stdout.strip()) == MESSAGES, "the broker acknowledged every message"

        def arrived() -> int:
            with lock:
                return len(received)

        wait_for(lambda: arrived() >= MESSAGES, 120, what=f"{MESSAGES} reports at the bridge (have {arrived()})")
        time.sleep(1.0)  # and no more than that: each once
        assert arrived() == MESSAGES
    finally:
        busy.clear()
        bridge.stop()


def test_an_ingest_queue_smaller_than_the_in_flight_window_is_refused_with_what_to_change() -> None:
    with pytest.raises(ValidationError, match="EDGEFLEET_INGEST_QUEUE_MAX \\(1000\\) must be at least"):
        Settings(ingest_queue_max=1000, ingest_receive_maximum=65_535)
    assert Settings(ingest_receive_maximum=65_535).ingest_queue_max >= 65_535
