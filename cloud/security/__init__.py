"""Control-plane security: TUF repository, fleet CAs, director key, API tokens, broker config.

See docs/security.md for the threat model and which defence stops which attack.
"""

from cloud.security.ca import CONTROL_PLANE_IDENTITY, FleetCA
from cloud.security.director import DirectorKey
from cloud.security.keys import KeyPermissionError
from cloud.security.service import EnrollmentBundle, FleetSecurity
from cloud.security.tuf_repo import TufPolicy, TufRepository

__all__ = [
    "CONTROL_PLANE_IDENTITY",
    "DirectorKey",
    "EnrollmentBundle",
    "FleetCA",
    "FleetSecurity",
    "KeyPermissionError",
    "TufPolicy",
    "TufRepository",
]
