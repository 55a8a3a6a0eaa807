"""``edgefleet samples ...``: captured samples and labelling."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cloud.cli.client import (
    DEFAULT_SERVER,
    ApiError,
    Exit,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    client_from,
    console,
    emit_json,
    fail,
    table,
)

samples_app = typer.Typer(help="Captured samples and labelling.", no_args_is_help=True)


@samples_app.command("label")
def samples_label(
    assignments: Annotated[list[str], typer.Argument(
        help="SAMPLE_ID=LABEL, SAMPLE_ID= to reject the sample, or for a detection sample "
             "SAMPLE_ID='[{\"label\": \"car\", \"x1\": 0.1, \"y1\": 0.2, \"x2\": 0.4, \"y2\": 0.5}]' "
             "(JSON boxes; \"units\": \"pixels\" for source pixels; [] = no objects)")],
    labeller: Annotated[str | None, typer.Option(help="recorded in the audit log, e.g. 'oracle:synthetic'")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Label captured samples (they join the next retraining dataset).

    A label must be one of the classes of the sample's model; a detection sample is
    labelled with a JSON list of its boxes. A sample that already has a label is
    relabelled (its label history keeps the old one).
    """
    labels: dict[str, Any] = {}
    for item in assignments:
        sample_id, sep, label = item.partition("=")
        if not sep or not sample_id:
            fail(f"{item!r} is not SAMPLE_ID=LABEL (use SAMPLE_ID= to reject a sample)", Exit.BAD_INPUT)
        if label.lstrip().startswith("["):
            try:
                labels[sample_id] = json.loads(label)
            except json.JSONDecodeError as exc:
                fail(f"the boxes of {sample_id} are not valid JSON ({exc.msg} at character {exc.pos})",
                     Exit.BAD_INPUT)
        else:
            labels[sample_id] = label or None
    result = call(server, token, "POST", "/api/v1/samples/labels", {"labels": labels, "labeller": labeller})
    if json_out:
        emit_json(result)
    else:
        for change in result.get("changes", []):
            console.print(_change_line(change), highlight=False)


def _name(label: str | None, status: str) -> str:
    if status == "rejected":
        return "rejected"
    return label if label is not None else "unlabelled"


def _change_line(change: dict[str, Any]) -> str:
    old, new = _name(change["from"], change["from_status"]), _name(change["to"], change["to_status"])
    if change.get("unchanged"):
        return f"{change['sample_id']}: already {new}, unchanged"
    if change.get("relabelled"):
        return f"{change['sample_id']}: relabelled from {old} to {new}"
    return f"{change['sample_id']}: {new}"


@samples_app.command("show")
def samples_show(
    sample_id: Annotated[str, typer.Argument(help="the sample id (see `edgefleet samples list`)")],
    out: Annotated[Path | None, typer.Option("--out", help="write the sample's JPEG here "
                                                            "(default: a new file in the temp directory)")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One sample: device, prediction and confidence, its boxes (detection), current label and history; saves the image."""
    client = client_from(server, token)
    path = f"/api/v1/samples/{quote(sample_id, safe='')}"
    image_note: str
    try:
        sample: dict[str, Any] = client.get(path)
        image_path: Path | None = None
        if sample.get("image_sha256"):
            try:
                content = client.download(f"{path}/image")
            except ApiError as exc:
                image_note = exc.detail  # e.g. deleted by retention: the rest is still worth showing
            else:
                if out is None:
                    handle, name = tempfile.mkstemp(prefix=f"edgefleet-{sample_id}-", suffix=".jpg")
                    with open(handle, "wb") as file:
                        file.write(content)
                    image_path = Path(name)
                else:
                    out.write_bytes(content)
                    image_path = out
                image_note = str(image_path)
        else:
            image_note = "none: the device sent statistics only"
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    except OSError as exc:
        fail(f"cannot write the image to {out}: {exc.strerror}", Exit.BAD_INPUT)
    finally:
        client.close()
    if json_out:
        emit_json({**sample, "image_file": str(image_path) if image_path else None})
        return
    confidence = cell(sample.get("confidence"), ".2f")
    reason = f" ({sample['reason']})" if sample.get("reason") else ""
    lines = [f"sample      {sample['sample_id']}",
             f"device      {sample['device_id']}",
             f"model       {cell(sample.get('model_version'))}",
             f"sampler     {sample['sampler']}{reason}",
             f"captured    {str(sample['captured_at'])[:19]}",
             f"prediction  {cell(sample.get('predicted_label'))} (confidence {confidence})",
             f"label       {_name(sample.get('label'), sample['status'])}"
             + (f" by {sample['labelled_by']}" if sample.get("labelled_by") else ""),
             f"classes     {', '.join(sample['classes']) if sample.get('classes') else 'unknown (model not in the registry)'}",
             f"image       {image_note}"]
    boxes = sample.get("boxes") or []
    if boxes:
        lines.append(f"boxes       {len(boxes)} (x1, y1, x2, y2 as fractions of the frame)")
        lines += [f"  {box.get('model', 'active'):9} {box['label']} {cell(box.get('score'), '.2f')} "
                  f"({box['x1']:.3f}, {box['y1']:.3f}, {box['x2']:.3f}, {box['y2']:.3f})" for box in boxes]
    labelled = sample.get("label_boxes")
    if labelled is not None:
        lines.append(f"labelled    {len(labelled)} box(es) (fractions of the frame)")
        lines += [f"  {box['label']} ({box['x1']:.3f}, {box['y1']:.3f}, {box['x2']:.3f}, {box['y2']:.3f})"
                  for box in labelled]
    for line in lines:
        console.print(line, highlight=False)
    history = sample.get("history") or []
    if history:
        console.print(table("label history", ["at", "by", "change"],
                             [[str(h["at"])[:19], h["actor"],
                               f"{_name(h['from'], h['from_status'])} → {_name(h['to'], h['to_status'])}"]
                              for h in history]))
    else:
        console.print("label history: none", highlight=False)


@samples_app.command("list")
def samples_list(status: str = "unlabelled", device: Annotated[list[str] | None, typer.Option()] = None,
                 limit: int = 100, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 json_out: JsonOpt = False) -> None:
    """Samples awaiting a label (or any ``--status``)."""
    samples: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/samples", status=status, device_id=device,
                                          limit=limit)
    if json_out:
        emit_json(samples)
        return
    console.print(table("samples", ["sample", "device", "sampler", "reason", "predicted", "conf", "status", "label"],
                         [[s["sample_id"], s["device_id"], s["sampler"], s["reason"], cell(s["predicted_label"]),
                           cell(s["confidence"], ".2f"), s["status"], cell(s["label"])] for s in samples]))
