"""Detection quality as operators read it: one view built from what training and builds recorded.

Training stores the detector's evaluation (mAP@0.5 and mAP@0.5:0.95 overall, per class and
per slice) and its gate decision with the thresholds it used in the lineage; each build
stores its artifacts' summaries (``map_50``, ``map_50_95``, per-slice mAP@0.5). This pure
function joins them into the rows the API, the dashboard and the CLI show, so the three
agree. Versions registered before the thresholds were recorded show no pass/fail for
slices instead of a guessed one.
"""

from __future__ import annotations

from typing import Any

TASK = "detection"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int8_drops(artifacts: list[dict[str, Any]], fallback_map_50: float | None) -> list[dict[str, Any]]:
    """Each artifact's mAP; an INT8 one also its mAP@0.5 drop (percentage points) against the FP32
    artifact of the same runtime in the same build, or against the model's own test mAP@0.5."""
    fp32_by_runtime = {a.get("runtime"): _number(a.get("map_50")) for a in artifacts if a.get("precision") == "fp32"}
    rows = []
    for artifact in artifacts:
        map_50 = _number(artifact.get("map_50"))
        drop_pp = None
        if artifact.get("precision") == "int8" and map_50 is not None:
            reference = fp32_by_runtime.get(artifact.get("runtime"))
            reference = reference if reference is not None else fallback_map_50
            drop_pp = round((reference - map_50) * 100.0, 3) if reference is not None else None
        gate = artifact.get("gate") or {}
        rows.append({"file": artifact.get("file"), "runtime": artifact.get("runtime"),
                     "precision": artifact.get("precision"), "profiles": artifact.get("profiles") or [],
                     "map_50": map_50, "map_50_95": _number(artifact.get("map_50_95")),
                     "map_50_drop_pp": drop_pp, "accepted": artifact.get("accepted"),
                     "gate_reasons": gate.get("reasons") or []})
    return rows


def detection_quality(*, hyperparameters: dict[str, Any] | None, evaluation: dict[str, Any] | None,
                      gate: dict[str, Any] | None, builds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The detection-quality view of a model version, or ``None`` for a classifier."""
    evaluation = evaluation or {}
    if (hyperparameters or {}).get("task") != TASK and evaluation.get("task") != TASK:
        return None
    gate = gate or {}
    thresholds = gate.get("thresholds") if isinstance(gate.get("thresholds"), dict) else None
    map_50 = _number(evaluation.get("map_50"))
    min_map_50 = _number((thresholds or {}).get("min_map_50"))
    min_slice_map_50 = _number((thresholds or {}).get("min_slice_map_50"))
    min_slice_images = _number((thresholds or {}).get("min_slice_images"))
    ap_50, ap_50_95 = evaluation.get("ap_50") or {}, evaluation.get("ap_50_95") or {}
    per_class = [{"label": label, "ap_50": _number(ap_50.get(label)), "ap_50_95": _number(ap_50_95.get(label))}
                 for label in sorted(set(ap_50) | set(ap_50_95))]
    per_slice = []
    for name, result in sorted((evaluation.get("slices") or {}).items()):
        images = int(result.get("images") or 0)
        slice_map_50 = _number(result.get("map_50"))
        gated = min_slice_images is not None and images >= min_slice_images
        passed = (slice_map_50 is not None and min_slice_map_50 is not None and slice_map_50 >= min_slice_map_50
                  ) if gated else None
        per_slice.append({"slice": name, "images": images, "map_50": slice_map_50,
                          "map_50_95": _number(result.get("map_50_95")), "min_map_50": min_slice_map_50,
                          "gated": gated, "passed": passed})
    return {
        "images": evaluation.get("images"), "map_50": map_50, "map_50_95": _number(evaluation.get("map_50_95")),
        "min_map_50": min_map_50,
        "passed": (map_50 >= min_map_50) if map_50 is not None and min_map_50 is not None else None,
        "gate_status": gate.get("status"), "gate_reasons": gate.get("reasons") or [],
        "gate_notes": gate.get("notes") or [], "thresholds": thresholds,
        "per_class": per_class, "per_slice": per_slice,
        "artifacts": [{"build_id": build.get("id"), **row} for build in builds
                      for row in _int8_drops(list(build.get("artifacts") or []), map_50)],
    }
