"""Attackers for the security tests: a hostile mirror, a forging TUF signer, a device harness.

The mirror is a real HTTP server on loopback that serves whatever files the test
puts in its directory (a copy of the control plane's TUF repository, then
tampered with), supports ``Range``, and can trickle bytes or drop a connection
mid-file. Nothing here mocks TUF, crypto or HTTP: the device side is the agent's
real ``fetch_and_verify`` with the real ``PackageUpdater`` and ``HttpFetcher``.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.contract import DeployCommand, JobState, ModelArtifact, PackageManifest, PreprocessSpec
from agent.security import PackageUpdater
from agent.update.fetcher import HttpFetcher
from agent.update.installer import fetch_and_verify
from agent.update.store import PackageStore
from cloud.pipeline.package.builder import BuiltPackage, build_package
from cloud.security.tuf_repo import TufRepository

PROFILE = "x86-64-avx2"


class Mirror:
    """A hostile (or honest, until told otherwise) artifact server for one TUF repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.trickle_delay_s: float | None = None  # seconds between single bytes of target bodies
        self.drop_once: set[str] = set()  # target paths whose first response is cut in half
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                mirror.requests.append((self.path, self.headers.get("Range")))
                path = (mirror.root / self.path.lstrip("/")).resolve()
                if not path.is_relative_to(mirror.root.resolve()) or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes=") and range_header.endswith("-"):
                    start = int(range_header[len("bytes="):-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                is_target = self.path.startswith("/targets/")
                try:
                    if is_target and self.path in mirror.drop_once and start == 0:
                        mirror.drop_once.discard(self.path)
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if is_target and mirror.trickle_delay_s is not None:
                        for index in range(len(body)):
                            self.wfile.write(body[index:index + 1])
                            self.wfile.flush()
                            time.sleep(mirror.trickle_delay_s)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us, as it should

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def sync(self, repo: TufRepository) -> None:
        """Serve exactly what the repository serves right now."""
        for name in ("metadata", "targets"):
            shutil.copytree(repo.directory / name, self.root / name, dirs_exist_ok=True)

    def metadata(self, name: str) -> Path:
        return self.root / "metadata" / name

    def target_file(self, package_id: str, name: str) -> Path:
        matches = list((self.root / "targets" / package_id).glob(f"*.{name}"))
        assert len(matches) == 1, matches
        return matches[0]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def make_package(workdir: Path, version: str, *, profiles: list[str] | None = None, size: int = 4096) -> BuiltPackage:
    """A small package with one fake model file (the installer never loads it)."""
    source = workdir / "sources" / version / "model.onnx"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(hashlib.sha256(version.encode()).digest() * (size // 32))
    return build_package(
        packages_dir=workdir / "packages", model_name="shapes", model_version=version, labels=["a", "b"],
        spec=PreprocessSpec(width=32, height=32),
        artifacts=[(source, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32"))],
        hardware_profiles=profiles or [PROFILE],
    )


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and its sha256: the device's package store, byte for byte."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


class Device:
    """The agent's install path (TUF refresh, verified downloads, package store), without MQTT."""

    def __init__(self, workdir: Path, mirror: Mirror, trusted_root: bytes, *, profile: str = PROFILE,
                 deadline_s: float = 30.0) -> None:
        self.profile = profile
        self.state_dir = workdir / "device" / "state"
        self.store = PackageStore(self.state_dir)
        root_file = workdir / "device" / "identity" / "tuf-root.json"
        root_file.parent.mkdir(parents=True, exist_ok=True)
        root_file.write_bytes(trusted_root)
        self.updater = PackageUpdater(
            metadata_dir=workdir / "device" / "tuf", metadata_url=f"{mirror.url}/metadata/",
            targets_url=f"{mirror.url}/targets/", trusted_root=root_file,
            fetcher=HttpFetcher(timeout_s=5.0, deadline_s=deadline_s),
        )
        self.states: list[JobState] = []
        self.installed: list[str] = []
        self._seq = 0

    def install(self, package: BuiltPackage) -> PackageManifest:
        """Install ``package`` as the agent would on a verified deploy command. Raises what the agent reports."""
        self._seq += 1
        command = DeployCommand(
            device_id="cam-1", job_id=f"job-{self._seq}", package_id=package.manifest.package_id,
            model_version=package.manifest.model_version, manifest_url="unused", manifest_sha256=package.manifest_sha256,
            seq=self._seq, expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        manifest, _ = fetch_and_verify(command, updater=self.updater, store=self.store, hardware_profile=self.profile,
                                       max_package_bytes=64 * 1024 * 1024, on_state=self.states.append)
        self.installed.append(manifest.package_id)
        return manifest

    def trusted_root_version(self) -> int:
        import json

        document = json.loads((self.updater.metadata_dir / "root.json").read_bytes())
        return int(document["signed"]["version"])


def expect_refusal(device: Device, attack: Callable[[], object], error: type[Exception]) -> Exception:
    """Run ``attack`` and check the device refused it with ``error`` and changed nothing it keeps."""
    before = tree_digest(device.state_dir)
    installed_before = list(device.installed)
    try:
        attack()
    except error as exc:
        assert tree_digest(device.state_dir) == before, "a refused install changed the device's package store"
        assert device.installed == installed_before
        return exc
    raise AssertionError(f"the attack was not refused with {error.__name__}")
