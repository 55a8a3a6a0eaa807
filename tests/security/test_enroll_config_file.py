"""Enrollment edits the operator's agent.yaml in place: comments, order and other
settings survive; only the enrollment keys change."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from agent.security.enroll import enroll, identity_paths
from agent.yamlkeys import APPENDED_HEADER, update_top_level_keys

OPERATOR_FILE = """\
# Camera 7, loading dock. Owner: facilities (ext. 4411).
device_id: cam-old   # replaced on enrollment

# The camera on this box
camera:
  source: rtsp://10.0.0.7/stream   # main stream, not the sub-stream
  fps: 15
mqtt_url: mqtt://old-broker:1883
telemetry_interval_s: 10  # slow uplink
"""


def test_only_the_given_keys_change_and_every_comment_stays() -> None:
    edited = update_top_level_keys(OPERATOR_FILE, {"device_id": "cam-07", "mqtt_url": "mqtts://fleet:8883",
                                                   "state_dir": "/var/lib/edgefleet"})
    assert edited.startswith("# Camera 7, loading dock. Owner: facilities (ext. 4411).\n")
    assert "device_id: cam-07   # replaced on enrollment\n" in edited
    assert "  source: rtsp://10.0.0.7/stream   # main stream, not the sub-stream\n" in edited
    assert "telemetry_interval_s: 10  # slow uplink\n" in edited
    assert edited.endswith(f"{APPENDED_HEADER}\nstate_dir: /var/lib/edgefleet\n")
    assert yaml.safe_load(edited) == {"device_id": "cam-07", "camera": {"source": "rtsp://10.0.0.7/stream", "fps": 15},
                                      "mqtt_url": "mqtts://fleet:8883", "telemetry_interval_s": 10,
                                      "state_dir": "/var/lib/edgefleet"}
    # Order of the operator's keys is kept.
    keys = [line.split(":")[0] for line in edited.splitlines() if line and line[0].isalpha()]
    assert keys == ["device_id", "camera", "mqtt_url", "telemetry_interval_s", "state_dir"]


def test_a_nested_value_is_replaced_whole_and_odd_strings_are_quoted() -> None:
    text = "api_url:\n  nested: 1\n  more: 2\nkeep: yes  # the operator's\nnote: |\n  two\n  lines\nlast: 1\n"
    edited = update_top_level_keys(text, {"api_url": "https://x:8443/#frag", "empty": "", "note": "one # line"})
    assert yaml.safe_load(edited) == {"api_url": "https://x:8443/#frag", "keep": True, "empty": "",
                                      "note": "one # line", "last": 1}
    assert "keep: yes  # the operator's\n" in edited and "\nlast: 1\n" in edited


def test_enroll_over_a_commented_agent_yaml_keeps_it(control_plane, api: httpx.Client, tmp_path: Path) -> None:
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(OPERATOR_FILE)
    response = api.post("/api/v1/enrollment-tokens", json={"device_id": "cam-commented"})
    assert response.status_code == 201, response.text
    state_dir = tmp_path / "state"
    config = enroll(control_plane.base_url, str(response.json()["token"]), state_dir, config_path=config_path)
    written = config_path.read_text()
    for comment in ("# Camera 7, loading dock. Owner: facilities (ext. 4411).", "# replaced on enrollment",
                    "# The camera on this box", "# main stream, not the sub-stream", "# slow uplink"):
        assert comment in written, f"lost {comment!r}:\n{written}"
    loaded = yaml.safe_load(written)
    assert loaded == config
    assert loaded["device_id"] == "cam-commented" and loaded["mqtt_url"] == control_plane.broker_url
    assert loaded["camera"] == {"source": "rtsp://10.0.0.7/stream", "fps": 15}
    assert loaded["mqtt_cert_file"] == str(identity_paths(state_dir)["mqtt_cert_file"])
    # The operator's keys keep their places; enrollment keys the file lacked come after them.
    keys = [line.split(":")[0] for line in written.splitlines() if line and line[0].isalpha()]
    assert keys[:4] == ["device_id", "camera", "mqtt_url", "telemetry_interval_s"]
