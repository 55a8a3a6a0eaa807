"""Two ingest workers split the fleet's drift and sample reports through an MQTT 5 shared
subscription; batched writes store every report exactly once, redeliveries included."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, select

from agent.contract import DriftReport, SampleReport, Topics
from agent.contract.broker_url import parse_broker_url
from agent.contract.drift import encode_histograms
from cloud.core.db import make_engine, migrate
from cloud.fleet import crud
from cloud.fleet.tables import DeviceCreate
from cloud.messaging.bridge import CloudMqtt
from cloud.messaging.ingest import ReportIngest
from cloud.monitor.config import MonitorSettings
from cloud.monitor.service import install
from cloud.monitor.tables import DriftWindowRecord, SampleRecord
from tests.drift.test_reports_rejected import JPEG
from tests.support.services import wait_for

pytestmark = pytest.mark.integration
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def drift(device_id: str, seq: int) -> DriftReport:
    counts = np.zeros((2, 32), dtype=np.int64)
    counts[:, seq % 32] = 25
    return DriftReport(device_id=device_id, window_seq=seq, window_started_at=NOW, window_ended_at=NOW,
                       frames_seen=25, frames=25, features=["luma_mean", "top_score"],
                       histograms=encode_histograms(counts), means=[1.0, 0.5], stds=[0.1, 0.1])


def sample(device_id: str, seq: int) -> SampleReport:
    return SampleReport(device_id=device_id, sample_id=f"{device_id}-{seq:04d}x", sampler="random", captured_at=NOW,
                        upload="inline", image_sha256=hashlib.sha256(JPEG).hexdigest(), image_bytes=len(JPEG),
                        image_b64=base64.b64encode(JPEG).decode())


def test_shared_subscription_workers_split_and_store_once(mqtt_url: str, database_url: str, topic_prefix: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    devices = [f"cam-{i}" for i in range(6)]
    with Session(engine) as session:
        for device_id in devices:
            crud.create_device(session, DeviceCreate(id=device_id))
    topics = Topics(topic_prefix)
    group = f"drift-{uuid.uuid4().hex[:6]}"
    workers = []
    bridges = []
    for index in range(2):
        ingest = ReportIngest(engine, topics, max_report_bytes=64 * 1024, batch_max_rows=50, batch_wait_s=0.05)
        assert install(ingest, MonitorSettings())
        ingest.start()
        bridge = CloudMqtt(mqtt_url, topics, ingest.handle, on_report_acked=ingest.submit,
                           session_id=f"{group}-{index}", shared_group=group, protocol="5")
        bridge.start()
        workers.append(ingest)
        bridges.append(bridge)
    address = parse_broker_url(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{group}")
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        infos = []
        for seq in range(10):
            for device_id in devices:
                report = drift(device_id, seq)
                infos.append(client.publish(topics.drift(device_id), report.to_bytes(), qos=1))
                if seq % 3 == 0:  # a redelivery of the same message id
                    infos.append(client.publish(topics.drift(device_id), report.to_bytes(), qos=1))
                if seq % 5 == 0:
                    infos.append(client.publish(topics.samples(device_id), sample(device_id, seq).to_bytes(), qos=1))
        for info in infos:
            info.wait_for_publish(10)

        def stored() -> tuple[int, int]:
            with Session(engine) as session:
                return (len(list(session.exec(select(DriftWindowRecord.id)))),
                        len(list(session.exec(select(SampleRecord.id)))))

        wait_for(lambda: stored() == (60, 12), 60, what=f"60 windows and 12 samples stored (have {stored()})")
        accepted = [w.counters.as_dict()["accepted"] for w in workers]
        assert all(a.get("drift", 0) > 0 for a in accepted), accepted  # both workers took a share
        assert sum(a.get("drift", 0) for a in accepted) == 60
        assert sum(a.get("sample", 0) for a in accepted) == 12
        with Session(engine) as session:
            ids = [w.message_id for w in session.exec(select(DriftWindowRecord))]
        assert len(ids) == len(set(ids))
    finally:
        client.loop_stop()
        client.disconnect()
        for bridge in bridges:
            bridge.stop()
        for ingest in workers:
            ingest.stop()
        engine.dispose()
