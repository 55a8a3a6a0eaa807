"""The bytes a director signature covers: one canonical encoding shared by both sides.

Sorted keys, no whitespace, ASCII only, the ``signature`` field left out. Both the
control plane (signing) and the agent (verifying) call this, so they can never
disagree on what was signed.
"""

from __future__ import annotations

import json

from agent.contract.messages import DeployCommand

__all__ = ["command_signing_bytes"]


def command_signing_bytes(command: DeployCommand) -> bytes:
    document = command.model_dump(mode="json", exclude={"signature"})
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
