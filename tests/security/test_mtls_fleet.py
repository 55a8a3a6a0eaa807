"""End to end: an enrolled agent and the control plane over mutual TLS, through the ACL broker.

Everything a production fleet does: `edgefleet broker-config`'s Mosquitto (TLS,
certificates as identities, CRL, ACL), the control plane's client certificate,
a device enrolled with a one-time token, a signed command, a TUF-verified package.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.core.config import Settings
from cloud.core.db import make_engine
from cloud.security import FleetSecurity
from cloud.security.broker import write_broker_config, write_control_plane_identity
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.support.fleet import publish_model, start_agent, stop_agents
from tests.support.services import MosquittoProcess, free_port, mosquitto_available, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not mosquitto_available(), reason="needs the mosquitto binary")]


@pytest.fixture
def tls_plane(tmp_path: Path, database_url: str, topic_prefix: str) -> Iterator[ControlPlane]:
    port = free_port()
    data_dir = tmp_path / "cloud"
    base = Settings(data_dir=data_dir, database_url=database_url, topic_prefix=topic_prefix, api_port=0)
    # The CAs must exist before the broker that trusts them, and the broker before the control plane.
    security = FleetSecurity(base, make_engine(base.resolved_database_url))
    security.initialise()
    ca_file, cert_file, key_file = write_control_plane_identity(base.security_dir / "control-plane", security.ca)
    files = write_broker_config(tmp_path / "mosquitto", security.ca, prefix=topic_prefix, port=port,
                                bind="127.0.0.1", server_names=["127.0.0.1"], user=getpass.getuser())
    broker = MosquittoProcess(config_lines=files.config.read_text().splitlines(), port=port,
                              workdir=tmp_path / "mosquitto").start()
    settings = base.model_copy(update={"mqtt_url": f"mqtts://127.0.0.1:{port}", "mqtt_ca_file": ca_file,
                                       "mqtt_cert_file": cert_file, "mqtt_key_file": key_file})
    plane = ControlPlane(settings)
    try:
        plane.start()
        plane.serve_http_in_thread()
        yield plane
    finally:
        plane.stop()
        broker.stop()


def test_enrolled_agent_installs_over_mutual_tls(tls_plane: ControlPlane, trained_model: Any, tmp_path: Path) -> None:
    release = publish_model(tls_plane, trained_model)
    with httpx.Client(base_url=tls_plane.base_url, timeout=15, headers=control_plane_admin_headers(tls_plane)) as api:
        assert api.post("/api/v1/devices", json={"id": "cam-tls"}).status_code == 201
        agent = start_agent(tls_plane, tmp_path, "cam-tls")  # enrolls: key, certificate, broker CA, roots
        try:
            assert tls_plane.broker_url.startswith("mqtts://")
            wait_for(lambda: api.get("/api/v1/devices/cam-tls").json()["online"], 60, what="agent online over mTLS")
            response = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": ["cam-tls"]})
            assert response.status_code == 201, response.text
            deployment_id = response.json()["id"]
            wait_for(lambda: api.get(f"/api/v1/deployments/{deployment_id}").json()["state"] == "succeeded", 90,
                     what="deployment over mTLS to succeed")
            wait_for(lambda: api.get("/api/v1/devices/cam-tls").json()["running_model_version"] == release.model_version,
                     30, what="the new version reported over mTLS")
        finally:
            stop_agents([agent])
