"""Dashboard templates render every shape the APIs serve (pure: no server, no browser)."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

from cloud.dashboard.auth import DashboardUser
from cloud.dashboard.charts import Series, line_chart
from cloud.dashboard.routes import _scalar_metrics, _slices, templates
from cloud.security.tables import Role
from cloud.security.tokens import Principal

USER = DashboardUser("ops", Role.OPERATOR, Principal(Role.OPERATOR, "ops"), csrf="c" * 32)


def _render(name: str, **context: object) -> str:
    return templates.get_template(name).render(user=USER, nav="models", now=datetime.now(UTC), live_template=None,
                                               **context)


def test_model_page_renders_a_registry_record_with_evaluation_gate_and_builds() -> None:
    metrics = {"accuracy": 0.97, "samples": 400, "labels": ["circle", "square"],
               "per_class": {"circle": {"precision": 0.98, "recall": 0.96, "f1": 0.97, "support": 200}},
               "confusion_matrix": [[192, 8], [4, 196]],
               "slices": {"lighting=dark": {"samples": 100, "accuracy": 0.91, "correct": 91}}}
    model = {"id": 3, "name": "shapes", "version": "shapes-3", "status": "validated", "dataset_id": "ds-1",
             "code_version": "abc", "labels": ["circle", "square"], "hyperparameters": {"epochs": 8},
             "metrics": metrics, "onnx_sha256": "0" * 64, "created_at": "2026-11-23T19:00:00+00:00",
             "source": {"kind": "trained"}, "environment": {"torch": "2.13.0"},
             "gate": {"decision": "validated", "reasons": ["accuracy 0.97 >= 0.8"]}, "compared_with": "shapes-2",
             "builds": [{"id": "b-1", "profiles": ["rpi5-arm64"], "package_id": "shapes-3-abc",
                         "artifacts": [{"file": "model.int8.onnx", "runtime": "onnxruntime", "precision": "int8"}],
                         "notes": ["openvino: not installed"], "created_at": "2026-11-23T19:01:00+00:00"}]}
    html = _render("model.html", model=model, scalar_metrics=_scalar_metrics(metrics), slices=_slices(metrics),
                   slice_columns=["accuracy", "correct", "samples"], lineage=None, packages=[], devices=[])
    assert "lighting=dark" in html and "0.910" in html
    assert 'id="classes-table"' in html and "0.980" in html
    assert "Registry gate" in html and "accuracy 0.97 &gt;= 0.8" in html
    assert 'id="builds-table"' in html and "model.int8.onnx" in html
    # Untrusted strings are escaped, never markup.
    model["hyperparameters"] = {"note": "<script>alert(1)</script>"}
    html = _render("model.html", model=model, scalar_metrics={}, slices={}, slice_columns=[], lineage=None,
                   packages=[], devices=[])
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_charts_are_accessible_svg_with_gaps_for_missing_values() -> None:
    t0 = datetime(2026, 11, 23, 19, 0, tzinfo=UTC)
    points = [(t0.replace(second=s), v) for s, v in ((0, 1.0), (10, 2.0), (20, None), (30, 4.0), (40, 5.0))]
    svg = str(line_chart("Frames per second", [Series("fps", points)], chart_id="c1"))
    assert 'role="img"' in svg and "<title id=\"c1-title\">Frames per second</title>" in svg
    assert svg.count("<polyline") == 2  # the None splits the line instead of dropping it to zero
    assert "latest 5.0" in svg and "19:00:00 UTC" in svg
    empty = str(line_chart("Nothing", [Series("fps", [])], chart_id="c2"))
    assert "no data yet" in empty


class _Balance(HTMLParser):
    """Every non-void element is closed in order: the pages are well-formed for assistive tech."""

    VOID = {"meta", "link", "input", "img", "br", "hr", "line", "circle", "polyline"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()


def _balanced(html: str) -> None:
    checker = _Balance()
    checker.feed(html)
    assert not checker.errors and not checker.stack, (checker.errors[:5], checker.stack)


def test_rollout_page_with_engine_detail_is_well_formed() -> None:
    rollout = {
        "id": "ro-1", "name": "canary", "state": "awaiting_approval", "stage": 0, "stages": 2, "phase": "install",
        "halted_strata": [], "created_at": "2026-11-23T19:00:00", "finished_at": None, "device_count": 2,
        "plan": {"strata": {"a/onnxruntime": 2}, "stage_sizes": [{"a/onnxruntime": 1}, {"a/onnxruntime": 2}]},
        "spec": {"release": {"package_id": "p-2"}}, "devices_by_stratum": {"a/onnxruntime": {"succeeded": 1}},
        "evaluation": {"at": "2026-11-23T19:01:00", "action": "await_approval", "reason": "stage 0 passed", "stage": 0,
                       "phase": "install", "strata": {"a/onnxruntime": {"stratum": "a/onnxruntime", "halted": False,
                                                                        "device_states": {"succeeded": 1},
                                                                        "gates": [{"gate": "error_rate", "status": "pass",
                                                                                   "observed": 0.0, "threshold": 0.01,
                                                                                   "message": "ok", "numbers": {"n": 1}}]}}},
        "decisions": [{"id": 1, "stage": 0, "action": "created", "actor": "operator:ops", "reason": "planned",
                       "numbers": {}, "created_at": "2026-11-23T19:00:00"}],
    }
    from cloud.dashboard.routes import ACTION_LABELS, ACTION_QUESTIONS, ACTIONS_BY_STATE, _stage_rows

    devices = [{"device_id": "cam-1", "stratum": "a/onnxruntime", "stage": 0, "state": "succeeded", "package_id": "p-2",
                "previous_package_id": "p-1", "attempts": 1, "reason": ""}]
    html = _render("rollout.html", rollout=rollout, devices=devices, stage_rows=_stage_rows(rollout, devices),
                   actions=ACTIONS_BY_STATE["awaiting_approval"], action_labels=ACTION_LABELS,
                   action_questions=ACTION_QUESTIONS, message=None, error=None)
    assert "Approve next stage" in html and 'data-gate="error_rate"' in html
    assert "Stage 1 is waiting for approval" in html and "edgefleet rollout approve ro-1" in html
    _balanced(html)


def test_model_page_is_well_formed() -> None:
    model = {"version": "shapes-1", "status": "registered", "dataset_id": "ds-1", "code_version": None,
             "labels": ["a"], "hyperparameters": {}, "metrics": {"accuracy": 0.9}, "onnx_sha256": "0" * 64}
    _balanced(_render("model.html", model=model, scalar_metrics={"accuracy": 0.9}, slices={}, slice_columns=[],
                      lineage=None, packages=[], devices=[]))


def test_a_gate_reads_the_same_in_the_cli_and_the_dashboard() -> None:
    from cloud.cli.rollout import _gate_lines
    from cloud.dashboard.routes import _stage_rows

    gates = [
        # A confidence *drop* is observed as control minus canary: a canary that got worse is positive.
        {"gate": "mean_confidence", "status": "fail", "observed": 0.0213, "threshold": 0.02,
         "message": "mean confidence 0.700 vs control 0.721", "numbers": {}},
        {"gate": "restarts", "status": "insufficient", "observed": None, "threshold": None,
         "message": "no canary devices", "numbers": {}},
        {"gate": "class_distribution", "status": "pass", "observed": 0.41, "threshold": 1e-05,
         "message": "chi-square", "numbers": {}},
        {"gate": "error_rate", "status": "pass", "observed": 0.001, "threshold": 0.001, "message": "ok", "numbers": {}},
    ]
    verdict = {"stratum": "a/onnxruntime", "halted": False, "device_states": {"succeeded": 1}, "gates": gates}
    rollout = {
        "id": "ro-1", "name": "canary", "state": "running", "stage": 0, "stages": 1, "phase": "install",
        "halted_strata": [], "created_at": "2026-11-23T19:00:00", "finished_at": None, "device_count": 1,
        "plan": {"strata": {"a/onnxruntime": 1}, "stage_sizes": [{"a/onnxruntime": 1}]}, "spec": {},
        "devices_by_stratum": {}, "decisions": [],
        "evaluation": {"at": "2026-11-23T19:01:00", "action": "wait", "reason": "soaking", "stage": 0,
                       "phase": "install", "strata": {"a/onnxruntime": verdict}},
    }
    html = _render("rollout.html", rollout=rollout, devices=[], stage_rows=_stage_rows(rollout, []), actions=[],
                   action_labels={}, action_questions={}, message=None, error=None)
    cli = "\n".join(_gate_lines({"strata": {"a/onnxruntime": verdict}}))

    expected = {"mean_confidence": ("drop of 0.0213", "drop at most 0.02"),
                "restarts": ("\u2014", "not set"),
                "class_distribution": ("0.41", "fails below p = 1e-05"),
                "error_rate": ("0.001", "at most 0.001")}
    for gate, (observed, threshold) in expected.items():
        row = html.split(f'data-gate="{gate}"', 1)[1].split("</tr>", 1)[0]
        assert f'data-testid="gate-observed">{observed}<' in row, row
        assert f'data-testid="gate-threshold">{threshold}<' in row, row
        line = next(line for line in cli.splitlines() if f" {gate} " in line)
        assert f"observed: {observed}; threshold: {threshold}" in line, line
    assert "None" not in cli and "-0.0" not in cli + html
    _balanced(html)
