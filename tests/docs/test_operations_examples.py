"""The examples in docs/operations.md are accurate, not just plausible.

The rollout spec validates against the real spec model; every metric the example
Prometheus rules name is served by the control plane's or the agent's /metrics.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.contract import TelemetryReport
from agent.metrics import AgentMetrics
from cloud.rollout.spec import parse_spec

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def _yaml_blocks() -> list[str]:
    return [m.group("body") for m in FENCE.finditer(OPERATIONS.read_text()) if m.group("info").strip() == "yaml"]


def _exposed_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # Families with no sample yet (no rollout exists) are still declared.
    names.update(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    return names


def test_the_canary_spec_is_a_valid_rollout_spec() -> None:
    specs = [yaml.safe_load(b) for b in _yaml_blocks() if "release:" in b]
    assert specs, "operations.md lost its rollout spec example"
    for document in specs:
        spec = parse_spec(document)
        assert spec.stages[0].require_approval


@pytest.mark.integration
def test_every_metric_in_the_example_alerts_exists(control_plane) -> None:
    rules = [yaml.safe_load(b) for b in _yaml_blocks() if "groups:" in b]
    assert len(rules) == 1, "operations.md should hold one example rules file"
    expressions = [rule["expr"] for group in rules[0]["groups"] for rule in group["rules"]]
    named = {name for expr in expressions for name in re.findall(r"\bedgefleet_[a-z0-9_]+", expr)}
    assert len(named) >= 8, named

    served = _exposed_names(httpx.get(f"{control_plane.base_url}/metrics", timeout=10).text)
    agent = AgentMetrics("cam-01", "0.1.0")
    agent.observe_window(TelemetryReport(device_id="cam-01", window_s=1, frames=10, fps=10.0, p95_latency_ms=3.0,
                                         mean_confidence=0.9))
    served |= _exposed_names(agent.render())
    missing = sorted(named - served)
    assert not missing, f"docs/operations.md alerts name metrics nobody serves: {missing}"
