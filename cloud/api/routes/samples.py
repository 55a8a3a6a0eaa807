"""Sample images and the labelling API.

Devices upload a sample's JPEG with ``PUT /devices/{id}/samples/blobs`` (their own
token, or an operator's) and then publish the MQTT sample report naming its sha256.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import ActorDep, PlaneDep, SessionDep, get_principal
from cloud.core.ids import SAMPLE_ID
from cloud.governance.labelling import (
    accept_labels,
    box_labels,
    get_sample,
    label_history,
    list_samples,
    model_classes,
    model_tasks,
    sample_image,
)
from cloud.monitor import service
from cloud.monitor.tables import SampleRecord
from cloud.security.tables import Role
from cloud.security.tokens import Principal

router = APIRouter(tags=["samples"])
# Reached by device tokens, so it carries its own access rule instead of require_access.
device_router = APIRouter(tags=["samples"])


def device_or_operator(request: Request, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A device may upload only for itself; otherwise an operator is needed."""
    device_id = request.path_params.get("device_id")
    if principal.role == Role.DEVICE:
        if principal.device_id == device_id:
            return principal
        raise HTTPException(403, f"device {principal.device_id} may only upload its own samples")
    if not principal.at_least(Role.OPERATOR):
        raise HTTPException(403, f"role {principal.role.value} may not upload samples; it needs operator")
    return principal


@device_router.put("/devices/{device_id}/samples/blobs", status_code=201,
                   dependencies=[Depends(device_or_operator)])
async def upload_blob(device_id: str, request: Request, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    # The body limit (cloud/api/hardening.py) has already bounded this route to the same size,
    # declared or chunked; counting here too keeps the read bounded wherever the route is mounted.
    limit = plane.settings.monitor.max_upload_bytes
    content = bytearray()
    async for chunk in request.stream():
        content += chunk
        if len(content) > limit:
            raise HTTPException(413, f"sample image is larger than the {limit}-byte limit "
                                     "(EDGEFLEET_MONITOR_MAX_UPLOAD_BYTES)")
    if not content.startswith(b"\xff\xd8"):
        raise HTTPException(415, "sample images must be JPEG (body starting with FF D8)")
    if not service.device_exists(session, device_id):
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return {"sha256": service.store_blob(session, device_id, bytes(content)), "size_bytes": len(content)}


def _public(record: SampleRecord, classes: list[str] | None = None, task: str | None = None) -> dict[str, Any]:
    # ``task`` says what the label is: a class name (classification) or a list of boxes (detection).
    return {"classes": classes, "task": task, "sample_id": record.sample_id, "device_id": record.device_id, "model_version": record.model_version,
            "camera": record.camera, "sampler": record.sampler, "reason": record.reason, "captured_at": record.captured_at,
            "predicted_label": record.predicted_label, "confidence": record.confidence, "status": record.status,
            "label": record.label, "labelled_by": record.labelled_by, "image_sha256": record.image_sha256,
            "image_bytes": record.image_bytes, "stats_only": record.stats_only, "features": record.features,
            "image_width": record.image_width, "image_height": record.image_height, "boxes": record.boxes}


@router.get("/samples")
def samples(session: SessionDep, status: str | None = Query(default="unlabelled"),
            device_id: Annotated[list[str] | None, Query()] = None, sampler: str | None = None,
            limit: int = Query(default=500, ge=1, le=5000), offset: int = Query(default=0, ge=0)
            ) -> list[dict[str, Any]]:
    """Samples to label (``status=unlabelled``, the default), or any status with ``status=``."""
    records = list_samples(session, status=status or None, device_ids=device_id, sampler=sampler, limit=limit,
                           offset=offset)
    classes, tasks = model_classes(session, records), model_tasks(session, records)
    return [_public(r, classes.get(r.sample_id), tasks.get(r.sample_id)) for r in records]


@router.get("/samples/{sample_id}")
def show_sample(sample_id: str, session: SessionDep) -> dict[str, Any]:
    """One sample: its prediction, current label (a detection sample's labelled boxes in ``label_boxes``),
    the model's classes and the label history."""
    record = get_sample(session, sample_id)
    return {**_public(record, model_classes(session, [record]).get(sample_id),
                      model_tasks(session, [record]).get(sample_id)),
            "labelled_at": record.labelled_at, "package_id": record.package_id,
            "label_boxes": box_labels(session, [sample_id]).get(sample_id),
            "history": [{"at": c.at, "actor": c.actor, "from": c.old_label, "to": c.new_label,
                         "from_status": c.old_status, "to_status": c.new_status,
                         **({"from_boxes": c.old_boxes, "to_boxes": c.new_boxes}
                            if c.old_boxes is not None or c.new_boxes is not None else {})}
                        for c in label_history(session, sample_id)]}


@router.get("/samples/{sample_id}/image", response_class=Response)
def image(sample_id: Annotated[str, PathParam(pattern=SAMPLE_ID)], session: SessionDep) -> Response:
    return Response(content=sample_image(session, sample_id), media_type="image/jpeg")


class LabelBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Boxes stay plain objects here: the labelling core checks them against the frame and the
    # model's classes and names the sample and box in its message.
    labels: dict[str, str | list[dict[str, Any]] | None] = Field(
        min_length=1, max_length=5000,
        description="sample_id -> label; null rejects the sample. A detection sample takes a list of boxes "
                    '{"label", "x1", "y1", "x2", "y2", "units": "fraction"|"pixels"} ([] = no objects)')
    labeller: str | None = Field(default=None, max_length=64, description="e.g. 'oracle:synthetic'")


@router.post("/samples/labels")
def label(batch: LabelBatch, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Label (or, with null, reject) samples. A label must be a class of the sample's model (422 otherwise);
    a detection sample's boxes must lie inside the frame, have an area and name a class of the model (422
    otherwise). A sample that already had a label is relabelled, and the answer says from what to what."""
    if batch.labeller:
        actor = f"{actor} via {batch.labeller}"
    changes = accept_labels(session, batch.labels, actor=actor)
    return {"labelled": len(changes), "changes": [c.as_dict() for c in changes],
            "relabelled": [c.as_dict() for c in changes if c.relabelled]}
