"""Property-based tests for every parser of the wire contract (agent/contract).

Each parser gets three kinds of input: arbitrary bytes/text, arbitrary JSON documents,
and valid messages with one field replaced by an arbitrary JSON value. The property is
always the same: the parser returns a valid object or raises its documented error
(``ContractError`` for messages, ``TopicError``/``ValueError`` elsewhere), never
anything else; and whatever a sender builds, the receiver parses back unchanged.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.contract import (
    DEFAULT_MAX_REPORT_BYTES,
    ContractError,
    DeployCommand,
    DeviceMismatch,
    DeviceState,
    JobState,
    JobStatusReport,
    PackageManifest,
    PayloadTooLarge,
    ReportKind,
    StatusReport,
    TelemetryReport,
    TopicError,
    Topics,
    parse_command,
    parse_report,
    validate_device_id,
)
from agent.contract.broker_url import BrokerAddress, parse_broker_url
from agent.contract.drift import HISTOGRAM_BINS, DriftReference, decode_histograms, encode_histograms
from agent.contract.signing import command_signing_bytes

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
message_ids = st.from_regex(r"\A[A-Za-z0-9_-]{8,64}\Z")
short_text = st.text(max_size=40)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def telemetry_reports(draw: st.DrawFn) -> TelemetryReport:
    frames = draw(st.integers(min_value=0, max_value=10_000))
    return TelemetryReport(
        device_id=draw(device_ids), message_id=draw(message_ids), sent_at=draw(moments),
        model_version=draw(st.none() | short_text), window_s=draw(st.floats(0, 86_400)), frames=frames,
        fps=draw(finite), p95_latency_ms=draw(st.none() | finite),
        mean_confidence=draw(st.none() | st.floats(0, 1)),
        class_counts=draw(st.dictionaries(short_text, st.integers(0, 10_000), max_size=5)),
        inference_errors=draw(st.integers(0, 1000)), camera_ok=draw(st.booleans()),
        report_seq=draw(st.none() | st.integers(0, 2**40)),
    )


@st.composite
def status_reports(draw: st.DrawFn) -> StatusReport:
    return StatusReport(device_id=draw(device_ids), message_id=draw(message_ids), sent_at=draw(moments),
                        state=draw(st.sampled_from(DeviceState)), agent_version=draw(short_text),
                        running_model_version=draw(st.none() | short_text))


@st.composite
def job_reports(draw: st.DrawFn) -> JobStatusReport:
    return JobStatusReport(device_id=draw(device_ids), message_id=draw(message_ids), sent_at=draw(moments),
                           job_id=draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")),
                           state=draw(st.sampled_from(JobState)), error_code=draw(st.none() | short_text),
                           error=draw(st.none() | st.text(max_size=200)))


@st.composite
def deploy_commands(draw: st.DrawFn) -> DeployCommand:
    return DeployCommand(
        device_id=draw(device_ids), message_id=draw(message_ids), sent_at=draw(moments),
        job_id=draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")), package_id=draw(short_text),
        model_version=draw(short_text), manifest_url=draw(st.text(max_size=100)),
        manifest_sha256=draw(st.from_regex(r"\A[0-9a-f]{64}\Z")), seq=draw(st.integers(0, 2**53)),
        expires_at=draw(moments), signature=draw(st.none() | st.text(max_size=100)),
    )


REPORTS: dict[ReportKind, st.SearchStrategy[Any]] = {
    ReportKind.STATUS: status_reports(),
    ReportKind.TELEMETRY: telemetry_reports(),
    ReportKind.JOB: job_reports(),
}
KINDS = [ReportKind.STATUS, ReportKind.TELEMETRY, ReportKind.JOB, ReportKind.DRIFT, ReportKind.SAMPLES]


# --- message parsers ---------------------------------------------------------------
@PROPS
@given(kind=st.sampled_from(KINDS), payload=st.binary(max_size=2000), device_id=device_ids)
@example(kind=ReportKind.TELEMETRY, payload=b"\xff\xfe", device_id="cam-1")
@example(kind=ReportKind.TELEMETRY, payload=b"[]", device_id="cam-1")
def test_parse_report_on_arbitrary_bytes_raises_only_contract_errors(kind: ReportKind, payload: bytes,
                                                                     device_id: str) -> None:
    try:
        report = parse_report(kind, payload, device_id)
    except ContractError as exc:
        assert exc.reason in {"oversized", "malformed", "schema", "device_mismatch"}
        return
    assert report.device_id == device_id


@PROPS
@given(kind=st.sampled_from(KINDS), document=json_values, device_id=device_ids)
def test_parse_report_on_arbitrary_json_raises_only_contract_errors(kind: ReportKind, document: Any,
                                                                    device_id: str) -> None:
    with pytest.raises(ContractError):  # no random document is a complete, valid report
        parse_report(kind, json.dumps(document).encode(), device_id)


# Found by this suite: json.loads recurses once per nesting level and 20,000 levels fit
# in the 64 KB limit, so RecursionError used to escape the contract's parsers (fixed in
# agent/contract: it is now a MalformedPayload).
DEEP = b"[" * 20_000 + b"]" * 20_000


def test_parse_report_on_deeply_nested_json_raises_a_contract_error() -> None:
    assert len(DEEP) < DEFAULT_MAX_REPORT_BYTES
    with pytest.raises(ContractError):
        parse_report(ReportKind.TELEMETRY, DEEP, "cam-1")


def test_parse_command_on_deeply_nested_json_raises_a_contract_error() -> None:
    with pytest.raises(ContractError):
        parse_command(DEEP)


@PROPS
@given(data=st.data(), kind=st.sampled_from(list(REPORTS)))
def test_reports_round_trip_and_reject_other_devices(data: st.DataObject, kind: ReportKind) -> None:
    report = data.draw(REPORTS[kind])
    payload = report.to_bytes()
    assert parse_report(kind, payload, report.device_id) == report
    other = data.draw(device_ids.filter(lambda d: d != report.device_id))
    with pytest.raises(DeviceMismatch):
        parse_report(kind, payload, other)
    with pytest.raises(PayloadTooLarge):
        parse_report(kind, payload, report.device_id, max_bytes=len(payload) - 1)


@PROPS
@given(data=st.data(), kind=st.sampled_from(list(REPORTS)), value=json_values)
def test_a_report_with_one_field_replaced_parses_or_is_rejected(data: st.DataObject, kind: ReportKind,
                                                                value: Any) -> None:
    report = data.draw(REPORTS[kind])
    document = json.loads(report.to_bytes())
    field = data.draw(st.sampled_from([*sorted(document), "unexpected_field"]))
    document[field] = value
    try:
        parsed = parse_report(kind, json.dumps(document).encode(), report.device_id)
    except ContractError:
        return
    assert field != "unexpected_field", "unknown fields must be refused (extra='forbid')"
    assert parsed.device_id == report.device_id


@PROPS
@given(payload=st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_command_raises_only_contract_errors(payload: bytes) -> None:
    with contextlib.suppress(ContractError):
        parse_command(payload)


@PROPS
@given(command=deploy_commands())
def test_commands_round_trip_with_identical_signing_bytes(command: DeployCommand) -> None:
    received = parse_command(command.to_bytes())
    assert received == command
    # The director signs these bytes before sending; the device recomputes them after parsing.
    assert command_signing_bytes(received) == command_signing_bytes(command)


# --- topics and identifiers -----------------------------------------------------------
@PROPS
@given(text=st.text(max_size=100))
def test_validate_device_id_accepts_only_safe_topic_levels(text: str) -> None:
    try:
        assert validate_device_id(text) == text
    except ValueError:
        return
    assert 1 <= len(text) <= 64
    assert not set(text) & {"/", "+", "#", "\x00", " "}


@PROPS
@given(prefix=st.sampled_from(["ef/v1", "t-abc/ef/v1"]), topic=st.text(max_size=120))
def test_topic_parser_raises_only_topic_errors(prefix: str, topic: str) -> None:
    topics = Topics(prefix)
    try:
        device_id, kind = topics.parse_report(topic)
    except TopicError:
        return
    assert kind in ReportKind and "/" not in device_id


@PROPS
@given(device_id=device_ids, job_id=st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"))
def test_built_topics_parse_back(device_id: str, job_id: str) -> None:
    topics = Topics("t/ef/v1")
    assert topics.parse_report(topics.status(device_id)) == (device_id, ReportKind.STATUS)
    assert topics.parse_report(topics.telemetry(device_id)) == (device_id, ReportKind.TELEMETRY)
    assert topics.parse_report(topics.job(device_id, job_id)) == (device_id, ReportKind.JOB)
    with pytest.raises(TopicError):
        topics.parse_report(topics.commands(device_id))


@PROPS
@given(url=st.text(max_size=80) | st.builds(lambda s, h, p: f"{s}://{h}:{p}",
                                            st.sampled_from(["mqtt", "mqtts", "tcp", "ssl", "http"]),
                                            st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"), st.integers(-5, 70_000)))
def test_broker_url_parser_raises_only_value_errors(url: str) -> None:
    try:
        address = parse_broker_url(url)
    except ValueError:
        return
    assert isinstance(address, BrokerAddress) and address.host and 0 < address.port < 65_536


# --- files: package manifest, drift reference, histograms -----------------------------
@PROPS
@given(raw=st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
def test_manifest_parser_raises_only_value_errors(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        PackageManifest.from_bytes(raw)


@PROPS
@given(raw=st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
def test_drift_reference_parser_raises_only_value_errors(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        DriftReference.from_bytes(raw)


@PROPS
@given(text=st.text(max_size=300), features=st.integers(-3, 40))
def test_histogram_decoder_raises_only_value_errors(text: str, features: int) -> None:
    try:
        counts = decode_histograms(text, features)
    except ValueError:
        return
    assert counts.shape == (features, HISTOGRAM_BINS) and (counts >= 0).all()


@PROPS
@given(rows=st.lists(st.lists(st.integers(0, 100_000), min_size=HISTOGRAM_BINS, max_size=HISTOGRAM_BINS),
                     min_size=1, max_size=8))
def test_histograms_round_trip_saturating_at_uint16(rows: list[list[int]]) -> None:
    import numpy as np

    counts = np.asarray(rows)
    decoded = decode_histograms(encode_histograms(counts), len(rows))
    assert (decoded == np.minimum(counts, 65_535)).all()


def test_expired_is_a_field_not_a_parse_error() -> None:
    # Expiry is policy (the agent refuses stale commands), not syntax: the parser keeps it.
    command = DeployCommand(device_id="cam-1", job_id="j1", package_id="p", model_version="m",
                            manifest_url="http://x/manifest.json", manifest_sha256="0" * 64, seq=1,
                            expires_at=datetime.now(UTC) - timedelta(days=1))
    assert parse_command(command.to_bytes()).expires_at == command.expires_at
