"""What makes a camera set acceptable, checked the same way by the control plane's API (a 4xx
before anything is sent) and by the agent (a signed command is still refused when it breaks
these). Pure: specs in, a list of problems out, each saying what to fix.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from agent.contract.messages import CameraRegion, CameraSpec

__all__ = ["CAMERA_NAME_PATTERN", "MAX_CAMERAS", "MAX_TARGET_FPS", "PACKAGE_ID_PATTERN", "camera_set_problems",
           "camera_spec_problems", "redact_source"]

# The agent runs at most this many pipelines (AgentConfig.pipelines has the same bound).
MAX_CAMERAS = 8
MAX_TARGET_FPS = 120.0
CAMERA_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# What a package manifest allows (agent/contract/manifest.py): the id also names a model's directory.
PACKAGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
_SECRET_ONLY = re.compile(r"^\{secret:[A-Za-z0-9_.-]{1,64}\}$")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# Query parameters that cameras accept credentials in (some ONVIF and MJPEG firmwares).
_PASSWORD_PARAMS = frozenset({"password", "passwd", "pwd", "pass", "pw", "token", "key"})


def redact_source(source: str) -> str:
    """``source`` with a literal ``user:password@`` replaced by ``***@`` (a ``{secret:NAME}`` stays)."""
    match = _USERINFO.match(source)
    if match is None or _SECRET_ONLY.match(match.group("userinfo")):
        return source
    return f"{match.group('scheme')}***@{source[match.end():]}"


def _has_control_characters(text: str) -> bool:
    return any(ord(character) < 32 or ord(character) == 127 for character in text)


def _source_problems(name: str, source: str) -> list[str]:
    if _has_control_characters(source):
        return [f"camera {name!r}: source contains control characters; give a plain URL, path or device index"]
    if not source.strip():
        return [f"camera {name!r}: source is empty; give a URL (rtsp://...), a file path, a device index "
                "or synthetic:<seed>"]
    if source.startswith("synthetic:"):
        seed = source.removeprefix("synthetic:")
        return [] if seed.isdigit() else [f"camera {name!r}: synthetic source {source!r} must look like "
                                          "synthetic:<integer seed>"]
    if source.isdigit() or "://" not in source:
        return []  # a device index, a /dev/video* device or a file path on the device
    scheme = source.split("://", 1)[0].lower()
    if scheme not in NETWORK_SCHEMES:
        return [f"camera {name!r}: unsupported URL scheme {scheme!r}; use one of {', '.join(NETWORK_SCHEMES)}"]
    userinfo_match = _USERINFO.match(source)
    if userinfo_match is not None and not _SECRET_ONLY.match(userinfo_match.group("userinfo")):
        return [f"camera {name!r}: the source URL carries literal credentials; store them as a secret on the "
                f"device (camera_secrets_dir/NAME holding user:password) and write "
                f"{scheme}://{{secret:NAME}}@host/... instead"]
    # The secret reference is not URL syntax: parse what remains once it is taken out.
    parseable = source if userinfo_match is None else userinfo_match.group("scheme") + source[userinfo_match.end():]
    try:
        parts = urlsplit(parseable)
        port = parts.port
    except ValueError as exc:
        return [f"camera {name!r}: source URL cannot be parsed ({exc}); write it as {scheme}://host[:port]/path"]
    if not parts.hostname:
        return [f"camera {name!r}: source URL names no host; write it as {scheme}://host[:port]/path"]
    if port == 0:
        return [f"camera {name!r}: source URL has port 0; give the camera's real port"]
    for key, _value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in _PASSWORD_PARAMS:
            return [f"camera {name!r}: the source URL carries a {key!r} parameter; credentials belong in a "
                    f"secret on the device, referenced as {scheme}://{{secret:NAME}}@host/..."]
    return []


def _region_problems(name: str, region: CameraRegion | None) -> list[str]:
    if region is None:
        return []
    values = (region.x, region.y, region.width, region.height)
    if not all(math.isfinite(v) for v in values):
        return [f"camera {name!r}: region values must be finite fractions of the frame"]
    if region.x < 0 or region.y < 0 or region.width <= 0 or region.height <= 0:
        return [f"camera {name!r}: region x and y must be >= 0 and width and height > 0 (fractions of the frame)"]
    if region.x + region.width > 1 + 1e-9 or region.y + region.height > 1 + 1e-9:
        return [f"camera {name!r}: region must lie inside the frame (x + width <= 1 and y + height <= 1, "
                "as fractions of the frame)"]
    return []


def camera_spec_problems(spec: CameraSpec) -> list[str]:
    """What is wrong with one camera on its own (empty when nothing)."""
    problems: list[str] = []
    if not CAMERA_NAME_PATTERN.fullmatch(spec.name):
        problems.append(f"camera name {spec.name!r} must be 1-32 letters, digits, '_' or '-'")
    problems += _source_problems(spec.name, spec.source)
    if not math.isfinite(spec.target_fps) or not 0 <= spec.target_fps <= MAX_TARGET_FPS:
        problems.append(f"camera {spec.name!r}: target_fps must be between 0 (as fast as frames arrive) "
                        f"and {MAX_TARGET_FPS:g}")
    problems += _region_problems(spec.name, spec.region)
    if spec.package_id is not None and not PACKAGE_ID_PATTERN.fullmatch(spec.package_id):
        problems.append(f"camera {spec.name!r}: package_id {spec.package_id!r} is not a package id; give one from "
                        "`edgefleet package list` or leave it out")
    return problems


def camera_set_problems(specs: Sequence[CameraSpec]) -> list[str]:
    """What is wrong with a device's whole camera set (empty when it can run as given)."""
    problems: list[str] = []
    if not specs:
        problems.append("a device needs at least one camera")
    if len(specs) > MAX_CAMERAS:
        problems.append(f"{len(specs)} cameras; a device runs at most {MAX_CAMERAS}")
    duplicates = sorted(name for name, count in Counter(spec.name for spec in specs).items() if count > 1)
    if duplicates:
        problems.append(f"camera names must be unique; used more than once: {', '.join(repr(n) for n in duplicates)}")
    for spec in specs:
        problems += camera_spec_problems(spec)
    return problems
