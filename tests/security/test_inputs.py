"""Bounded inputs against a running control plane: body sizes, dataset paths, ids that name files.

The control plane runs in this test process (a uvicorn thread), so its memory is this
process's VmRSS; the client streams its bodies from a generator, a megabyte at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import control_plane_admin_headers

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _rss_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def _stream(total: int, *, first: bytes = b"") -> Iterator[bytes]:
    """``total`` bytes, one MiB per chunk (no Content-Length: httpx sends it chunked)."""
    block = b"x" * MIB
    sent = 0
    if first:
        yield first
        sent = len(first)
    while sent < total:
        size = min(MIB, total - sent)
        yield block[:size]
        sent += size


def _client(plane, *, admin: bool = False) -> httpx.Client:
    headers = control_plane_admin_headers(plane) if admin else {}
    return httpx.Client(base_url=plane.base_url, timeout=120, headers=headers)


def test_300_mb_enroll_bodies_get_413_and_the_server_stays_small(control_plane) -> None:
    before = _rss_bytes()
    with _client(control_plane) as anonymous:
        # Declared length: refused before the body is read.
        declared = anonymous.post("/api/v1/enroll", content=_stream(300 * MIB),
                                  headers={"content-type": "application/json", "content-length": str(300 * MIB)})
        # No length at all (chunked): counted as it streams, refused once past the limit.
        chunked = anonymous.post("/api/v1/enroll", content=_stream(300 * MIB),
                                 headers={"content-type": "application/json"})
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text[:300]
        detail = answer.json()["detail"]
        assert "EDGEFLEET_MAX_REQUEST_BYTES" in detail and str(MIB) in detail
    grown = _rss_bytes() - before
    assert grown < 100 * MIB, f"the server grew by {grown // MIB} MiB on refused bodies"


def test_chunked_sample_upload_over_its_limit_is_refused_without_buffering(control_plane, api) -> None:
    assert api.post("/api/v1/devices", json={"id": "cam-big"}).status_code == 201
    limit = control_plane.settings.monitor.max_upload_bytes
    before = _rss_bytes()
    with _client(control_plane, admin=True) as operator:
        refused = operator.put("/api/v1/devices/cam-big/samples/blobs", content=_stream(200 * MIB, first=b"\xff\xd8"))
        just_over = operator.put("/api/v1/devices/cam-big/samples/blobs", content=_stream(limit + 1, first=b"\xff\xd8"))
        at_limit = operator.put("/api/v1/devices/cam-big/samples/blobs", content=_stream(limit, first=b"\xff\xd8"))
    assert refused.status_code == 413 and "EDGEFLEET_MONITOR_MAX_UPLOAD_BYTES" in refused.json()["detail"]
    assert just_over.status_code == 413, just_over.text
    assert at_limit.status_code == 201, at_limit.text
    grown = _rss_bytes() - before
    assert grown < 100 * MIB, f"the server grew by {grown // MIB} MiB on a refused upload"


def test_uploads_get_their_route_limit_and_json_the_small_one(plane_with, mqtt_url) -> None:
    plane = plane_with(max_request_bytes=64 * 1024)
    with _client(plane, admin=True) as operator:
        assert operator.post("/api/v1/devices", json={"id": "cam-up"}).status_code == 201
        # 200 KB: over the JSON limit, within the sample route's 256 KiB.
        image = b"\xff\xd8" + os.urandom(200 * 1024)
        stored = operator.put("/api/v1/devices/cam-up/samples/blobs", content=image)
        assert stored.status_code == 201, stored.text
        assert stored.json()["size_bytes"] == len(image)
        # A 2 MiB model upload passes the body limit (it fails later, as the junk ONNX it is).
        imported = operator.post("/api/v1/models/import",
                                 files={"model": ("m.onnx", os.urandom(2 * MIB), "application/octet-stream")},
                                 data={"labels": "a\nb", "preprocessing": "{}", "name": "junk"})
        assert imported.status_code != 413, imported.text
        # The same size as JSON is refused, naming the setting to raise.
        too_big = operator.post("/api/v1/devices", content=json.dumps({"id": "x" * 100 * 1024}),
                                headers={"content-type": "application/json"})
        assert too_big.status_code == 413 and "EDGEFLEET_MAX_REQUEST_BYTES" in too_big.json()["detail"]
        assert "65536" in too_big.json()["detail"]


def test_dataset_paths_outside_the_import_root_are_refused_and_never_listed(control_plane, api, tmp_path: Path) -> None:
    etc_entries = {p.name for p in Path("/etc").iterdir() if p.is_dir() and len(p.name) > 3}
    outside = tmp_path / "outside"
    for label in ("secret-a", "secret-b"):
        (outside / label).mkdir(parents=True)
    # The default import root (EDGEFLEET_DATASET_IMPORT_ROOT unset).
    root = (control_plane.settings.data_dir / "imports").resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "escape").symlink_to(outside)
    for path in ("/etc", str(outside), "../outside", "../../outside", "escape", str(root / ".." / "..")):
        for route in ("/api/v1/datasets/validate", "/api/v1/datasets"):
            answer = api.post(route, json={"path": path})
            assert answer.status_code == 403, (route, path, answer.text)
            assert "EDGEFLEET_DATASET_IMPORT_ROOT" in answer.json()["detail"]
            assert not etc_entries & set(answer.text.replace('"', " ").replace("'", " ").split())
            assert "secret-a" not in answer.text
    # Inside the root, a relative path works (and a missing one says so).
    missing = api.post("/api/v1/datasets/validate", json={"path": "not-there"})
    assert missing.status_code == 400 and "does not exist" in missing.json()["detail"]


def test_crafted_dataset_ids_never_reach_the_filesystem(control_plane, api, tmp_path: Path) -> None:
    # A manifest outside the dataset store that a '../' id would otherwise load.
    store = control_plane.settings.data_dir / "datasets"
    store.mkdir(parents=True, exist_ok=True)
    bait = control_plane.settings.data_dir / "bait.json"
    bait.write_text(json.dumps({"labels": ["a", "b"], "samples": [], "metadata_fields": [], "issues": []}))
    for dataset_id in ("../bait", str(bait.with_suffix("")), "ds-0000000000000000/../../bait", "..", "/etc/passwd"):
        trained = api.post("/api/v1/models/train", json={"dataset_id": dataset_id, "epochs": 1})
        assert trained.status_code == 422, (dataset_id, trained.text)
        assert "dataset_id" in trained.text
        imported = api.post("/api/v1/models/import",
                            files={"model": ("m.onnx", b"not onnx", "application/octet-stream")},
                            data={"labels": "a\nb", "preprocessing": "{}", "name": "x", "dataset_id": dataset_id})
        assert imported.status_code == 422, (dataset_id, imported.text)
    for path in ("/api/v1/datasets/..%2Fbait", "/api/v1/models/..%2Fbait", "/api/v1/packages/..%2Fbait",
                 "/api/v1/packages/p/files/..%2Fmanifest.json", "/api/v1/samples/..%2Fbait/image"):
        answer = api.get(path)
        assert answer.status_code in (404, 422), (path, answer.text)
        assert answer.status_code == 422 or "bait" not in answer.text
