"""Gate values and thresholds as people read them: one formatter for the CLI and the dashboard.

The API keeps raw numbers (``observed``, ``threshold`` of a gate's JSON, docs/rollouts.md);
these helpers turn them into the same text wherever a gate is shown:

* numbers with 3 significant digits (``0.001``, ``1e-05``, ``1.25``), never a bare ``None``;
* a threshold that is not set says so (``not set``);
* a confidence drop reads ``drop of 0.02`` (a rise: ``rise of 0.02``), a drift score
  change ``increase of 0.1`` / ``decrease of 0.1``: no sign to decode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NOT_SET", "NO_VALUE", "GateText", "format_number", "gate_line", "gate_text"]

NO_VALUE = "\u2014"  # an em dash: nothing observed yet (distinct from a zero)
NOT_SET = "not set"

# Observed values that are a change against the control group: (word when >= 0, word when < 0).
_CHANGES = {"mean_confidence": ("drop of", "rise of"), "drift_score": ("increase of", "decrease of"),
            "mean_box_score": ("drop of", "rise of"), "boxes_per_frame": ("change of +", "change of -"),
            "class_counts_per_frame": ("change of +", "change of -")}
# How the observed value is compared with the threshold; gates not listed fail above it.
_LIMITS = {"mean_confidence": "drop at most", "drift_score": "increase at most",
           "class_distribution": "fails below p =", "shadow_agreement": "at least",
           "mean_box_score": "drop at most",
           # Relative changes against the control, failing in either direction when significant.
           "boxes_per_frame": "change within \u00b1", "class_counts_per_frame": "change per class within \u00b1"}


def format_number(value: float | int | None) -> str:
    """3 significant digits, the same everywhere; ``—`` for no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NO_VALUE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}"


def _observed(gate: str, value: float | None) -> str:
    if value is None:
        return NO_VALUE
    change = _CHANGES.get(gate)
    if change is None:
        return format_number(value)
    word = change[0] if value >= 0 else change[1]
    separator = "" if word.endswith(("+", "-")) else " "
    return f"{word}{separator}{format_number(abs(value))}"


def _threshold(gate: str, value: float | None) -> str:
    if value is None:
        return NOT_SET
    return f"{_LIMITS.get(gate, 'at most')} {format_number(value)}"


@dataclass(frozen=True)
class GateText:
    """One gate result (the API's JSON) as text."""

    gate: str
    status: str
    observed: str
    threshold: str
    message: str


def gate_text(gate: Mapping[str, Any]) -> GateText:
    name = str(gate.get("gate", ""))
    observed, threshold = gate.get("observed"), gate.get("threshold")
    return GateText(gate=name, status=str(gate.get("status", "")),
                    observed=_observed(name, observed if isinstance(observed, int | float) else None),
                    threshold=_threshold(name, threshold if isinstance(threshold, int | float) else None),
                    message=str(gate.get("message") or ""))


def gate_line(gate: Mapping[str, Any]) -> str:
    """The CLI's line for a gate: status, name, observed, threshold, message."""
    text = gate_text(gate)
    return (f"{text.status:<12} {text.gate:<22} observed: {text.observed}; threshold: {text.threshold}"
            f"  {text.message}")
