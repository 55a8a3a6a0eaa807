"""The bytes a director signature covers: one canonical encoding shared by both sides.

Sorted keys, no whitespace, ASCII only, the ``signature`` field left out. Both the
control plane (signing) and the agent (verifying) call this, so they can never
disagree on what was signed.

Fields added to a command after agents shipped are left out while at their default
(``rollback`` false), so a control plane that predates them and an agent that knows them
still agree on the bytes; a non-default value is always in the signed bytes.
"""

from __future__ import annotations

import json

from agent.contract.messages import Command, DeployCommand

__all__ = ["command_signing_bytes"]


def command_signing_bytes(command: Command) -> bytes:
    document = command.model_dump(mode="json", exclude={"signature"})
    if isinstance(command, DeployCommand) and not command.rollback:
        del document["rollback"]
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
