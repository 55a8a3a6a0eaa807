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
    app = AgentApp(config)

    def _stop(signum: int, frame: FrameType | None) -> None:
        app.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app.run_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="EdgeFleet device agent")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent until stopped")
    run.add_argument("--config", required=True, help="agent config file (YAML or JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "run":
        return _run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
