"""Update top-level ``key: value`` lines of a YAML file and leave every other byte alone.

``yaml.safe_dump`` of a loaded file loses the operator's comments, blank lines and key
order. Enrollment only sets a handful of top-level keys, so it rewrites just those lines
(keeping a trailing ``# comment`` on them) and appends the keys the file lacks. The
result is parsed back and compared with the intended mapping; a file this line-based
editor cannot handle safely (flow mappings, anchors, several documents) is rewritten
whole instead, in its original key order, so the values are always right.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["update_top_level_keys"]

_TOP_LEVEL_KEY = re.compile(r"""^(?P<quote>["']?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P=quote)[ \t]*:(?=[ \t]|$)""")
APPENDED_HEADER = "# Written by `edgefleet-agent enroll`:"


def _scalar(value: Any) -> str:
    """``value`` as YAML on one line (flow style), as it goes after ``key: ``."""
    flow: str = yaml.safe_dump([value], default_flow_style=True, width=2**31 - 1, allow_unicode=True)
    return flow.strip()[1:-1]


def _trailing_comment(key: str, rest: str) -> str:
    """The ``  # comment`` ending ``rest`` (the text after ``key:``), or ""."""
    for match in re.finditer(r"[ \t]+#", rest):
        before, comment = rest[:match.start()], rest[match.start():]
        try:
            if yaml.safe_load(f"{key}:{before}") == yaml.safe_load(f"{key}:{rest}"):
                return comment
        except yaml.YAMLError:
            continue
    return ""


def _rewritten(text: str, values: Mapping[str, Any]) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    seen: set[str] = set()
    skipping_block = False
    for line in lines:
        if skipping_block:
            # The old value was a nested block (indented lines or a "- item" list under the key).
            if line.strip() == "" or line[0] in " \t" or line.startswith("- "):
                continue
            skipping_block = False
        match = _TOP_LEVEL_KEY.match(line)
        if match is None or match.group("key") not in values:
            out.append(line)
            continue
        key = match.group("key")
        rest = line[match.end():].rstrip("\r\n")
        newline = line[len(line.rstrip("\r\n")):] or "\n"
        comment = _trailing_comment(key, rest)
        value_text = rest[: len(rest) - len(comment)] if comment else rest
        if value_text.strip() == "" or value_text.strip()[:1] in ("|", ">"):
            skipping_block = True  # a nested mapping or list, or a block scalar, on the lines below
        seen.add(key)
        out.append(f"{line[:match.end()]} {_scalar(values[key])}{comment}{newline}")
    missing = [key for key in values if key not in seen]
    if missing:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(f"{APPENDED_HEADER}\n")
        out.extend(f"{key}: {_scalar(values[key])}\n" for key in missing)
    return "".join(out)


def update_top_level_keys(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with each key of ``values`` set at the top level; comments and order kept.

    Existing keys keep their line (and trailing comment); new keys are appended under a
    one-line header. If the edited text would not load as the intended mapping, the
    whole mapping is dumped instead (order kept, comments lost) so the values are never wrong.
    """
    try:
        loaded = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError:
        loaded = None
    original: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    intended = {**original, **values}
    if isinstance(loaded, dict) or not text.strip():
        edited = _rewritten(text, values)
        try:
            if yaml.safe_load(edited) == intended:
                return edited
        except yaml.YAMLError:
            pass
    dumped: str = yaml.safe_dump(intended, sort_keys=False, allow_unicode=True)
    return dumped
