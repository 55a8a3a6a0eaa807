"""``edgefleet-agent``: the device-side command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from agent import __version__
from agent.app import AgentApp
from agent.config import AgentConfig


def _run(args: argparse.Namespace) -> int:
    try:
        config = AgentConfig.load(Path(args.config))
    except ValueError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    app = AgentApp(config, config_path=Path(args.config))

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
    return 2


if __name__ == "__main__":
    sys.exit(main())
