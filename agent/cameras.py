"""The device's camera set, managed from the control plane: pure diff and checks, plus the one
file that keeps the applied set across restarts.

The agent's config file names the initial cameras (revision 0). A signed
:class:`~agent.contract.CameraConfigCommand` replaces the whole set; the agent checks it
(:func:`device_problems`), saves it (:class:`CameraSetFile`) *before* it touches a pipeline,
and then starts, stops or restarts only the cameras whose spec changed
(:func:`plan_cameras`). After a restart the saved set wins over the config file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import AgentConfig, PipelineConfig
from agent.contract.cameras import camera_set_problems, redact_source
from agent.contract.manifest import MANIFEST_FILE
from agent.contract.messages import CameraRegion, CameraSpec
from agent.fsutil import atomic_write_json, read_json
from agent.update.store import SLOTS, PackageStore, SlotContent

__all__ = ["CAMERA_SET_FILE", "AppliedCameraSet", "CameraPlan", "CameraSetFile", "adopt_package", "device_problems",
           "device_stores", "pipeline_config_for", "plan_cameras", "region_of", "reported_spec", "roi_of",
           "shared_model_problems", "spec_of"]

log = logging.getLogger(__name__)

CAMERA_SET_FILE = "cameras.json"


@dataclass(frozen=True)
class CameraPlan:
    """What applying a new camera set does, by camera name (each list sorted)."""

    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    @property
    def changes_nothing(self) -> bool:
        return not (self.start or self.stop or self.restart)


def plan_cameras(current: Sequence[CameraSpec], desired: Sequence[CameraSpec]) -> CameraPlan:
    """Which cameras to start (new names), stop (gone), restart (same name, any field changed)
    and leave alone (identical spec), so one camera's change never disturbs the others."""
    now = {spec.name: spec for spec in current}
    wanted = {spec.name: spec for spec in desired}
    return CameraPlan(
        start=sorted(wanted.keys() - now.keys()),
        stop=sorted(now.keys() - wanted.keys()),
        restart=sorted(name for name in wanted.keys() & now.keys() if wanted[name] != now[name]),
        keep=sorted(name for name in wanted.keys() & now.keys() if wanted[name] == now[name]),
    )


def device_problems(specs: Sequence[CameraSpec], *, known_packages: Iterable[str]) -> list[str]:
    """:func:`~agent.contract.cameras.camera_set_problems` plus what only the device knows:
    a camera may only be assigned a package this device holds."""
    problems = camera_set_problems(specs)
    known = set(known_packages)
    for spec in specs:
        if spec.package_id is not None and spec.package_id not in known:
            problems.append(f"camera {spec.name!r}: package {spec.package_id!r} is not on this device; deploy it "
                            "to one of its cameras first" + (f" (it holds {', '.join(sorted(known))})" if known
                                                            else " (it holds none yet)"))
    return problems


def shared_model_problems(configs: Sequence[PipelineConfig]) -> list[str]:
    """Cameras sharing one model (``model:`` in the config file) serve one package: they may not
    be assigned different ones."""
    assigned: dict[str, dict[str, str]] = {}
    for config in configs:
        if config.package_id is not None:
            assigned.setdefault(config.model_group, {})[config.name] = config.package_id
    return [f"cameras {', '.join(repr(name) for name in sorted(cameras))} share model {model!r} but are assigned "
            f"different packages ({', '.join(sorted(set(cameras.values())))}); assign them one package"
            for model, cameras in sorted(assigned.items()) if len(set(cameras.values())) > 1]


def roi_of(region: CameraRegion | None) -> tuple[float, float, float, float] | None:
    """A camera spec's region as the pipeline's region of interest (x, y, width, height)."""
    return None if region is None else (region.x, region.y, region.width, region.height)


def region_of(roi: tuple[float, float, float, float] | None) -> CameraRegion | None:
    """A pipeline's region of interest as a camera spec's region."""
    return None if roi is None else CameraRegion(x=roi[0], y=roi[1], width=roi[2], height=roi[3])


def spec_of(pipeline: PipelineConfig) -> CameraSpec:
    """The camera spec a pipeline config describes (the config file's cameras are revision 0)."""
    return CameraSpec(name=pipeline.name, source=pipeline.source_url(), target_fps=pipeline.target_fps,
                      region=region_of(pipeline.roi), package_id=pipeline.package_id,
                      rtsp_transport=pipeline.rtsp_transport)


def reported_spec(spec: CameraSpec) -> CameraSpec:
    """``spec`` as it may leave the device: a literal ``user:password@`` in a config-file URL redacted."""
    return spec.model_copy(update={"source": redact_source(spec.source)})


def pipeline_config_for(spec: CameraSpec, *, config: AgentConfig, base: PipelineConfig | None) -> PipelineConfig:
    """The pipeline config that runs ``spec``: the spec's fields over ``base`` (the config file's
    pipeline of that name, which keeps its stream timeouts and frame policy) or the agent's defaults."""
    template = base or PipelineConfig(name=spec.name, source=spec.source, source_loop=config.source_loop,
                                      frame_policy=config.frame_policy, frame_queue_depth=config.frame_queue_depth)
    changes: dict[str, object] = {
        "name": spec.name, "target_fps": spec.target_fps, "roi": roi_of(spec.region),
        "package_id": spec.package_id, "rtsp_transport": spec.rtsp_transport,
    }
    if base is None or spec_of(base).source != spec.source:
        # The spec's source already carries any {secret:NAME}; a separate credentials_ref would double it.
        changes["source"], changes["credentials_ref"] = spec.source, None
    if base is not None and spec_of(base).target_fps != spec.target_fps:
        changes["source_fps"] = None  # paced at the new target rate
    return template.model_copy(update=changes)


class AppliedCameraSet(BaseModel):
    """The camera set the device runs and the control plane's revision of it."""

    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=0)
    cameras: list[CameraSpec] = Field(max_length=16)


class CameraSetFile:
    """``<state_dir>/cameras.json``: the applied set, replaced atomically (saved before it is applied)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CAMERA_SET_FILE

    def load(self) -> AppliedCameraSet | None:
        """The saved set, or None when there is none (or it is unreadable: the config file's set runs)."""
        document = read_json(self.path)
        if document is None:
            return None
        try:
            return AppliedCameraSet.model_validate(document)
        except ValidationError as exc:
            log.error("camera set %s is unreadable (%s); running the config file's cameras", self.path, exc)
            return None

    def save(self, applied: AppliedCameraSet) -> None:
        atomic_write_json(self.path, applied.model_dump(mode="json"))


def device_stores(state_dir: Path) -> list[PackageStore]:
    """Every model's store on this device, running or not (a removed camera's model keeps its slots)."""
    root = state_dir / "pipelines"
    if not root.is_dir():
        return []
    return [PackageStore(state_dir, entry.name) for entry in sorted(root.iterdir()) if entry.is_dir()]


def find_package(stores: Iterable[PackageStore], package_id: str) -> tuple[Path, SlotContent] | None:
    """A slot on this device that holds ``package_id`` (its directory and recorded runtime choice)."""
    for store in stores:
        state = store.read()
        for slot in SLOTS:
            content = state.content(slot)
            if content is not None and content.package_id == package_id:
                return store.slot_dir(slot), content
    return None


def held_packages(stores: Iterable[PackageStore]) -> set[str]:
    packages: set[str] = set()
    for store in stores:
        state = store.read()
        packages |= {content.package_id for slot in SLOTS if (content := state.content(slot)) is not None}
    return packages


def adopt_package(target: PackageStore, source_dir: Path, content: SlotContent) -> None:
    """Make ``content``'s package (verified in ``source_dir``) the active one of ``target``.

    The files are re-checked against the manifest, staged into ``target``'s inactive slot
    and only then made active, so the camera keeps it across restarts like a deployed one.

    Raises:
        DigestMismatchError / InstallError: the stored package is corrupt or cannot be copied.
    """
    manifest = PackageStore.load_verified_dir(source_dir, content.package_id)
    files = {entry.name: (source_dir / entry.name).read_bytes() for entry in manifest.files}
    target.commit(manifest, (source_dir / MANIFEST_FILE).read_bytes(), files)
    state = target.read()
    slot = state.other_slot()
    state.slots[slot] = content.model_copy()
    state.active_slot = slot
    state.boot = None
    target.write(state)
