"""``edgefleet samples ...``: captured samples and labelling."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud.cli.client import (
    DEFAULT_SERVER,
    Exit,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    console,
    emit_json,
    fail,
    table,
)

samples_app = typer.Typer(help="Captured samples and labelling.", no_args_is_help=True)


@samples_app.command("label")
def samples_label(
    assignments: Annotated[list[str], typer.Argument(help="SAMPLE_ID=LABEL, or SAMPLE_ID= to reject the sample")],
    labeller: Annotated[str | None, typer.Option(help="recorded in the audit log, e.g. 'oracle:synthetic'")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Label captured samples (they join the next retraining dataset)."""
    labels: dict[str, str | None] = {}
    for item in assignments:
        sample_id, sep, label = item.partition("=")
        if not sep or not sample_id:
            fail(f"{item!r} is not SAMPLE_ID=LABEL (use SAMPLE_ID= to reject a sample)", Exit.BAD_INPUT)
        labels[sample_id] = label or None
    result = call(server, token, "POST", "/api/v1/samples/labels", {"labels": labels, "labeller": labeller})
    if json_out:
        emit_json(result)
    else:
        console.print(f"labelled {result.get('labelled')} sample(s)", highlight=False)


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
