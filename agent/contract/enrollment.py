"""Enrollment tokens that pin the fleet's trust anchors, and the proof a device gives when it rotates its key.

An enrollment token is ``efe_<secret>.<root pin>.<director pin>``. The secret is what
the control plane checks; the two pins are sha256 digests (base64url, unpadded) of
the ``root.json`` and the director public key PEM the control plane held when it made
the token. The token reaches the device out of band (an admin copies it), so the
pins let the device refuse trust anchors swapped in on the wire at first contact,
whatever the transport.

Certificate rotation: the device signs ``ROTATION_CONTEXT | device id | new CSR``
with its *current* key, so only the holder of the current key can obtain the next
certificate; a stolen API token alone cannot.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

__all__ = ["DIRECTOR_KEYS_FIELD", "ENROLLMENT_TOKEN_PREFIX", "PinnedEnrollmentToken", "anchor_pin", "rotation_proof_bytes"]

ENROLLMENT_TOKEN_PREFIX = "efe_"
# The field of TUF root that lists the director's public keys (PEM): rotating the director key
# is a root update, which devices verify against the chain they already trust.
DIRECTOR_KEYS_FIELD = "x-edgefleet-director-keys"
ROTATION_CONTEXT = b"edgefleet certificate rotation v1\n"


def anchor_pin(data: bytes) -> str:
    """The pin of a trust anchor: sha256, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class PinnedEnrollmentToken:
    secret: str
    root_pin: str
    director_pin: str

    def __str__(self) -> str:
        return f"{self.secret}.{self.root_pin}.{self.director_pin}"

    @classmethod
    def parse(cls, token: str) -> PinnedEnrollmentToken:
        """Split a token into its secret and pins.

        Raises:
            ValueError: not ``efe_<secret>.<root pin>.<director pin>``.
        """
        parts = token.strip().split(".")
        if len(parts) != 3 or not parts[0].startswith(ENROLLMENT_TOKEN_PREFIX) or not all(parts):
            raise ValueError("an enrollment token looks like efe_<secret>.<root pin>.<director pin>; "
                             "copy the whole token that `edgefleet token enroll` printed")
        return cls(parts[0], parts[1], parts[2])


def rotation_proof_bytes(device_id: str, csr_pem: bytes) -> bytes:
    """What the current device key signs to ask for a certificate for the key in ``csr_pem``."""
    return ROTATION_CONTEXT + device_id.encode() + b"\n" + csr_pem
