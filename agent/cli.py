"""``edgefleet-agent``: the device-side command line."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from agent import __version__
from agent.app import AgentApp
from agent.config import AgentConfig
from agent.fsutil import StateLock

STATE_LOCK_FILE = "agent.lock"
# Exit codes of install-bundle: installed; refused or failed; bad usage; handed over, outcome not known yet.
BUNDLE_INSTALLED, BUNDLE_REFUSED, BUNDLE_USAGE, BUNDLE_PENDING = 0, 1, 2, 3


def _run(args: argparse.Namespace) -> int:
    try:
        config = AgentConfig.load(Path(args.config))
    except ValueError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    lock = StateLock(config.state_dir / STATE_LOCK_FILE)
    if not lock.acquire():
        print(f"edgefleet-agent: another agent process is running on {config.state_dir} "
              f"(it holds {lock.path}); stop it first", file=sys.stderr)
        return 2
    try:
        app = AgentApp(config, config_path=Path(args.config))
    except ValueError as exc:  # settings that only conflict with the firmware profile's (network bounds)
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        app.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app.run_forever()
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from agent.security.enroll import EnrollmentError, enroll

    config_path = Path(args.config)
    state_dir = Path(args.state_dir) if args.state_dir else config_path.resolve().parent
    try:
        config = enroll(args.server, args.token, state_dir, config_path=config_path, allow_http=args.insecure_http)
    except EnrollmentError as exc:
        print(f"edgefleet-agent: enrollment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as {config['device_id']}; config written to {config_path}")
    return 0


def _rotate_cert(args: argparse.Namespace) -> int:
    from agent.security.enroll import EnrollmentError, rotate_certificate

    try:
        config = AgentConfig.load(Path(args.config))
        rotate_certificate(config.api_url, config.device_id, config.state_dir)
    except (ValueError, OSError) as exc:
        kind = "rotation failed" if isinstance(exc, EnrollmentError) else "error"
        print(f"edgefleet-agent: {kind}: {exc}", file=sys.stderr)
        return 1
    print("new certificate installed; restart the agent to use it")
    return 0


def _install_bundle(args: argparse.Namespace) -> int:
    """Verify a bundle here, hand it to the agent through its state directory, wait for the outcome.

    If no agent process runs on the state directory, this one takes its lock and runs the
    agent (camera, probation, reports) until the bundle's install has ended.
    """
    from datetime import UTC, datetime

    from agent.errors import AgentError
    from agent.security.bundle import (
        BUNDLE_OVERHEAD_BYTES,
        BundleQueue,
        check_bundle,
        copy_bundle,
        newest_trusted_root,
    )

    try:
        config = AgentConfig.load(Path(args.config))
    except ValueError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return BUNDLE_USAGE
    source = Path(args.path)
    if not source.exists():
        print(f"edgefleet-agent: {source} does not exist; name a bundle directory or .tar file", file=sys.stderr)
        return BUNDLE_USAGE
    bundles = BundleQueue(config.state_dir)
    staged = bundles.staging_dir()
    try:
        copy_bundle(source, staged, max_bytes=config.max_package_bytes + BUNDLE_OVERHEAD_BYTES)
        store = AgentApp.primary_store(config)
        verified, package = check_bundle(
            staged, device_id=config.device_id, hardware_profile=config.hardware_profile,
            trusted_root=newest_trusted_root(config.state_dir / "tuf" / "metadata", config.tuf_root_file),
            director_key_file=config.director_key_file, last_seq=store.last_command_seq(),
            release_floors=store.read().release_floors, now=datetime.now(UTC),
            seq_window=config.command_seq_window, max_package_bytes=config.max_package_bytes)
        job_id = verified.command.job_id
        bundles.submit(staged, job_id)
    except (AgentError, FileExistsError) as exc:
        shutil.rmtree(staged.parent, ignore_errors=True)
        code = exc.code if isinstance(exc, AgentError) else "already_queued"
        print(f"edgefleet-agent: bundle refused ({code}): {exc}. Nothing was installed; the running model is "
              "unchanged", file=sys.stderr)
        return BUNDLE_REFUSED
    print(f"bundle {verified.info.bundle_id} verified for {config.device_id}: {package.manifest.package_id} "
          f"({package.manifest.model_version}), job {job_id}")
    lock = StateLock(config.state_dir / STATE_LOCK_FILE)
    app: AgentApp | None = None
    if lock.acquire():
        print("no agent is running on this state directory: running it until the install ends")
        try:
            app = AgentApp(config, config_path=Path(args.config))
        except ValueError as exc:
            lock.release()
            print(f"edgefleet-agent: {exc}; the bundle waits in {bundles.inbox} for the agent", file=sys.stderr)
            return BUNDLE_PENDING
        app.start()
    else:
        print("handed to the running agent; waiting for the install (including probation)")
    try:
        deadline = time.monotonic() + args.wait_s
        result = bundles.result(job_id)
        while result is None and time.monotonic() < deadline:
            time.sleep(0.5)
            result = bundles.result(job_id)
    finally:
        if app is not None:
            app.request_stop()
            app.stop()
            lock.release()
    if result is None:
        print(f"edgefleet-agent: no outcome after {args.wait_s:.0f}s; the agent keeps the bundle in "
              f"{bundles.root} and reports job {job_id} when it reaches the control plane", file=sys.stderr)
        return BUNDLE_PENDING
    state = str(result.get("state"))
    detail = f" ({result.get('error_code')}): {result.get('error')}" if result.get("error_code") else ""
    print(f"job {job_id}: {state}{detail}; running model {result.get('running_model_version')}. "
          "The result is reported to the control plane when the device next reaches the broker")
    return BUNDLE_INSTALLED if state == "succeeded" else BUNDLE_REFUSED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="EdgeFleet device agent")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent until stopped")
    run.add_argument("--config", required=True, help="agent config file (YAML or JSON)")
    enroll = commands.add_parser("enroll", help="enroll with a one-time token: key pair, certificate, trust roots")
    enroll.add_argument("--server", required=True, help="control plane URL, e.g. https://fleet.example.com")
    enroll.add_argument("--token", required=True, help="one-time enrollment token from an admin")
    enroll.add_argument("--config", default="agent.yaml", help="agent config file to write (merged if it exists)")
    enroll.add_argument("--state-dir", help="where identity files go (default: the config file's directory)")
    enroll.add_argument("--insecure-http", action="store_true",
                        help="allow a plain http:// server that is not on this machine (a lab network only)")
    rotate = commands.add_parser("rotate-cert", help="replace this device's key and certificate")
    rotate.add_argument("--config", required=True, help="agent config file (YAML or JSON)")
    bundle = commands.add_parser("install-bundle", help="install an air-gapped update bundle (edgefleet bundle export)")
    bundle.add_argument("path", help="the bundle directory or .tar file")
    bundle.add_argument("--config", required=True, help="agent config file (YAML or JSON)")
    bundle.add_argument("--wait-s", type=float, default=900.0,
                        help="how long to wait for the install to end, probation included (default 900)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "run":
        return _run(args)
    if args.command == "enroll":
        return _enroll(args)
    if args.command == "rotate-cert":
        return _rotate_cert(args)
    if args.command == "install-bundle":
        return _install_bundle(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
