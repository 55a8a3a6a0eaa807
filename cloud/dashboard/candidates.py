"""Which releases the rollout form offers, and which it shows but refuses.

A package whose model failed the validation gate (status ``rejected``; it exists only
when built with ``--allow-unvalidated``) and a build whose every artifact failed the
quantization gate (so no package came of it) are candidates an operator looks for in
the form: they are listed, marked with the gate that failed and why, and cannot be chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud.fleet.tables import ModelVersion, Package
from cloud.pipeline.registry.tables import ModelBuild, ModelLineage

__all__ = ["Candidate", "package_candidates", "rejection_of"]

REJECTED_MODEL_STATUSES = frozenset({"rejected"})


@dataclass(frozen=True)
class Candidate:
    """One entry of the rollout form's release list."""

    key: str  # the package id, or the build id of a build that produced no package
    model_version: str
    hardware_profiles: list[str]
    package_id: str | None
    # None when the candidate can be rolled out; else which gate refused it and why.
    failed_gate: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def selectable(self) -> bool:
        return self.package_id is not None and self.failed_gate is None

    @property
    def why_not(self) -> str:
        if self.failed_gate is None:
            return ""
        return f"rejected by the {self.failed_gate}" + (f": {'; '.join(self.reasons)}" if self.reasons else "")


def _validation_rejections(session: Session, versions: set[str]) -> dict[str, list[str]]:
    """Model version -> the validation gate's reasons, for versions that gate rejected."""
    if not versions:
        return {}
    rejected = session.exec(select(ModelVersion).where(col(ModelVersion.version).in_(versions),
                                                       col(ModelVersion.status).in_(REJECTED_MODEL_STATUSES))).all()
    reasons: dict[str, list[str]] = {}
    for model in rejected:
        lineage = session.get(ModelLineage, model.id) if model.id is not None else None
        gate_reasons = (lineage.gate.get("reasons") if lineage else None) or []
        reasons[model.version] = [str(r) for r in gate_reasons] or [f"model status is {model.status}"]
    return reasons


def package_candidates(engine: Engine) -> list[Candidate]:
    """Every package (newest first), then builds the quantization gate left without a package."""
    with Session(engine) as session:
        packages = list(session.exec(select(Package).order_by(col(Package.created_at).desc())))
        empty_builds = list(session.exec(select(ModelBuild).where(col(ModelBuild.package_id).is_(None))
                                         .order_by(col(ModelBuild.created_at).desc()).limit(50)))
        build_versions = {m.id: m.version for m in session.exec(select(ModelVersion).where(
            col(ModelVersion.id).in_({b.model_version_id for b in empty_builds})))} if empty_builds else {}
        rejected_models = _validation_rejections(session, {p.model_version for p in packages})
    candidates = [
        Candidate(key=p.id, model_version=p.model_version, hardware_profiles=list(p.hardware_profiles),
                  package_id=p.id, failed_gate="validation gate" if p.model_version in rejected_models else None,
                  reasons=rejected_models.get(p.model_version, []))
        for p in packages
    ]
    for build in empty_builds:
        reasons = [f"{n.get('profile')} {n.get('target')}: {n.get('message')}" for n in build.notes
                   if isinstance(n, dict) and n.get("status") == "rejected"]
        if reasons:
            candidates.append(Candidate(key=build.id, model_version=build_versions.get(build.model_version_id, "?"),
                                        hardware_profiles=list(build.profiles), package_id=None,
                                        failed_gate="quantization gate", reasons=reasons))
    return candidates


def rejection_of(candidates: list[Candidate], package_ids: set[str]) -> str | None:
    """Why one of ``package_ids`` may not be rolled out, or None when all may."""
    for candidate in candidates:
        if candidate.package_id in package_ids and not candidate.selectable:
            return f"package {candidate.package_id} (model {candidate.model_version}) was {candidate.why_not}"
    return None
