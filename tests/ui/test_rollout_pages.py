"""The rollout pages tell the truth: a stopped rollout shows how it ended (no soaking
countdown), the form previews the plan before anything starts, and packages rejected
by their quality gates are shown as such and cannot be chosen."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
from sqlmodel import Session

from cloud.dashboard.auth import DashboardUser
from cloud.dashboard.candidates import Candidate
from cloud.dashboard.routes import _plan_view, templates
from cloud.fleet import crud
from cloud.pipeline.registry import store
from cloud.pipeline.registry.tables import ModelBuild, ModelLineage
from cloud.security.tables import Role
from cloud.security.tokens import Principal
from tests.ui.helpers import PROFILES, dashboard_login, make_release, make_token, page_csrf
from tests.ui.test_templates import _balanced

USER = DashboardUser("ops", Role.OPERATOR, Principal(Role.OPERATOR, "ops"), csrf="c" * 32)


def _rollout(state: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ro-1", "name": "canary", "state": state, "stage": 0, "stages": 2, "phase": "install",
        "halted_strata": [], "created_at": "2026-12-05T18:00:00", "finished_at": extra.pop("finished_at", None),
        "device_count": 2, "plan": {"strata": {"a": 2}, "stage_sizes": [{"a": 1}, {"a": 2}]},
        "spec": {"release": {"package_id": "p-2"}}, "devices_by_stratum": {"a": {"installing": 1}},
        "evaluation": {"at": "2026-12-05T18:01:00", "action": "wait", "reason": "soaking (28/30s)", "stage": 0,
                       "phase": "install", "strata": {"a": {"stratum": "a", "halted": False,
                                                            "device_states": {"installing": 1}, "gates": []}}},
        "decisions": [{"id": 1, "stage": 0, "action": "created", "actor": "operator:ops", "reason": "planned",
                       "numbers": {}, "created_at": "2026-12-05T18:00:00"},
                      {"id": 2, "stage": 0, "action": "operator_abort", "actor": "operator:ops",
                       "reason": "operator:ops chose abort", "numbers": {}, "created_at": "2026-12-05T18:01:02"}],
        **extra,
    }


def _render_rollout(rollout: dict[str, Any]) -> str:
    return templates.get_template("rollout_live.html").render(
        user=USER, rollout=rollout, devices=[], stage_rows=[], actions=(), action_labels={}, action_questions={},
        now=datetime.now(UTC))


@pytest.mark.parametrize("state", ["aborted", "cancelled", "aborting", "paused"])
def test_a_rollout_that_is_not_running_shows_no_soaking_countdown(state: str) -> None:
    html = _render_rollout(_rollout(state, finished_at="2026-12-05T18:01:02" if state in ("aborted", "cancelled")
                                    else None))
    assert "soaking" not in html and "28/30" not in html
    assert "Last evaluated, before the rollout stopped running" in html
    phase = re.search(r'data-testid="rollout-phase">([^<]*)<', html)
    assert phase is not None and phase.group(1) != "install"
    if state in ("aborted", "cancelled"):
        assert phase.group(1) == f"ended: {state}"
        ended = re.search(r'data-testid="rollout-ended">(.*?)</p>', html, re.S)
        assert ended is not None and state in ended.group(1)
        assert "2026-12-05 18:01:02 UTC" in ended.group(1) and "operator:ops chose abort" in ended.group(1)


def test_a_running_rollout_still_shows_its_live_evaluation() -> None:
    html = _render_rollout(_rollout("running"))
    assert "soaking (28/30s)" in html and 'data-testid="rollout-ended"' not in html
    assert re.search(r'data-testid="rollout-phase">install<', html)


def test_the_form_lists_rejected_candidates_disabled_with_the_failing_gate() -> None:
    candidates = [
        Candidate("p-good", "shapes-2", ["rpi5-arm64"], "p-good"),
        Candidate("p-bad", "shapes-3", ["rpi5-arm64"], "p-bad", "validation gate",
                  ["accuracy 0.610 is below the minimum 0.800"]),
        Candidate("build-x", "shapes-4", ["x86-64-avx2"], None, "quantization gate",
                  ["x86-64-avx2 onnx-int8: accuracy drop 4.00 pp exceeds the limit"]),
    ]
    html = templates.get_template("rollouts.html").render(
        user=USER, nav="rollouts", now=datetime.now(UTC), rollouts=[], rollouts_available=True, deployments=[],
        packages=[], candidates=candidates, profiles=["rpi5-arm64"], form={}, preview=None, message=None, error=None)
    options = re.findall(r"<option value=\"([^\"]*)\"([^>]*)>([^<]*)</option>", html)
    by_text = {text.split(" · ")[0]: (value, attrs, text) for value, attrs, text in options}
    assert "disabled" not in by_text["shapes-2"][1]
    assert "disabled" in by_text["shapes-3"][1] and "rejected by the validation gate: accuracy 0.610" in by_text["shapes-3"][2]
    assert "disabled" in by_text["shapes-4"][1] and "rejected by the quantization gate" in by_text["shapes-4"][2]
    assert 'id="rejected-candidates"' in html and "2 candidates rejected" in html
    assert 'formaction="/ui/rollouts/preview"' in html
    _balanced(html)


def test_the_preview_numbers_stages_from_one_and_names_the_package_per_profile() -> None:
    spec = {"release": {"package_id": "p-all", "packages": {"rpi5-arm64": "p-pi"}}}
    plan = {"strata": {"rpi5-arm64": 2, "x86-64-avx2": 4},
            "stages": [{"stage": 0, "cumulative_per_stratum": {"rpi5-arm64": 1, "x86-64-avx2": 1},
                        "devices": ["rpi5-01", "x86-01"], "offline": ["x86-01"]},
                       {"stage": 1, "cumulative_per_stratum": {"rpi5-arm64": 2, "x86-64-avx2": 4},
                        "devices": ["rpi5-02", "x86-02", "x86-03", "x86-04"], "offline": []}],
            "skipped": {"x86-05": "already runs the release"}}
    fleet = [{"device_id": f"{p.split('-')[0]}-0{i}", "hardware_profile": p} for p in PROFILES for i in range(1, 6)]
    view = _plan_view(spec, plan, fleet)
    assert [s["number"] for s in view["stages"]] == [1, 2]
    assert view["stages"][1]["new_per_stratum"] == {"rpi5-arm64": 1, "x86-64-avx2": 3}
    assert view["package_by_profile"] == {"rpi5-arm64": "p-pi", "x86-64-avx2": "p-all"}
    assert view["total"] == 6


# --- against a running control plane -------------------------------------------------------------
def _client(plane: Any, token: str) -> httpx.Client:
    client = httpx.Client(base_url=plane.base_url, timeout=30)
    assert dashboard_login(client, token, "/ui/rollouts").status_code == 303
    return client


def _reject(plane: Any, version: str, reason: str) -> None:
    with Session(plane.engine) as session:
        model = crud.get_model_version(session, version)
        assert model.id is not None
        store.save_lineage(session, ModelLineage(model_version_id=model.id, gate={"status": "rejected",
                                                                                   "reasons": [reason]}))
        store.set_status(session, model, "rejected")
        store.add_build(session, ModelBuild(id="build-int8-bad", model_version_id=model.id, profiles=[PROFILES[1]],
                                            artifacts=[], package_id=None,
                                            notes=[{"profile": PROFILES[1], "target": "onnx-int8", "status": "rejected",
                                                    "message": "accuracy drop 4.00 pp exceeds the limit of 1.00 pp"}]))


@pytest.mark.integration
def test_preview_refusal_and_abort_on_a_live_control_plane(control_plane, api, tmp_path) -> None:
    good = make_release(control_plane, tmp_path / "good")
    bad = make_release(control_plane, tmp_path / "bad", value=0.25)
    _reject(control_plane, bad.model_version, "accuracy 0.610 is below the minimum 0.800")
    for profile in PROFILES:
        for index in range(1, 4):
            response = api.post("/api/v1/devices", json={"id": f"{profile.split('-')[0]}-{index:02d}",
                                                         "hardware_profile": profile})
            assert response.status_code == 201, response.text
    token = make_token(control_plane, Role.OPERATOR)
    client = _client(control_plane, token)
    try:
        page = client.get("/ui/rollouts")
        assert page.status_code == 200
        option = re.search(rf'<option value="{bad.package_id}"([^>]*)>([^<]*)<', page.text)
        assert option is not None and "disabled" in option.group(1)
        assert "rejected by the validation gate: accuracy 0.610 is below the minimum 0.800" in option.group(2)
        assert "rejected by the quantization gate" in page.text and "build-int8-bad" in page.text

        form = {"csrf": page_csrf(client, "/ui/rollouts"), "package_id": good.package_id, "stage_kind": "count", "stages": "2,6",
                "soak_s": "3600", "name": "preview me"}
        preview = client.post("/ui/rollouts/preview", data=form)
        assert preview.status_code == 200, preview.text
        stages = re.findall(r'data-preview-stage="(\d+)"', preview.text)
        assert stages == ["1", "2"]
        for profile in PROFILES:
            assert re.search(rf"<th scope=\"row\">{profile}</th><td><code>{good.package_id}</code>", preview.text)
        assert 'value="preview me"' in preview.text  # the form keeps what was typed
        _balanced(preview.text)
        assert api.get("/api/v1/rollouts").json() == []  # a preview stores nothing

        for path in ("/ui/rollouts/preview", "/ui/rollouts"):
            refused = client.post(path, data={**form, "package_id": bad.package_id})
            assert refused.status_code == 303
            assert "rejected by the validation gate" in unquote_plus(refused.headers["location"])
        assert api.get("/api/v1/rollouts").json() == []

        created = api.post("/api/v1/rollouts", json={"name": "to abort", "release": {"package_id": good.package_id},
                                                     "target": {"all_devices": True}, "stages": [{"count": 2}, {"percent": 100}],
                                                     "soak_s": 3600})
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        assert api.post(f"/api/v1/rollouts/{rollout_id}/cancel").status_code == 200
        shown = client.get(f"/ui/rollouts/{rollout_id}?partial=1")
        assert re.search(r'data-testid="rollout-phase">ended: cancelled<', shown.text)
        assert 'data-testid="rollout-ended"' in shown.text and "soaking" not in shown.text
        listed = client.get("/ui/rollouts?partial=1")
        row = re.search(rf'<tr data-rollout="{rollout_id}">(.*?)</tr>', listed.text, re.S)
        assert row is not None and "cancelled" in row.group(1) and "install" not in row.group(1)
    finally:
        client.close()
