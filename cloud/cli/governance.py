"""``edgefleet governance ...``: retraining and rollout proposals, approvals, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud.cli.client import (
    DEFAULT_SERVER,
    ApiError,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    client_from,
    console,
    emit_json,
    err_console,
    fail,
    table,
)
from cloud.cli.jobs import NoWaitOpt, finish_watch, watch_job

governance_app = typer.Typer(help="Retraining and rollout proposals, approvals, the audit log.",
                             no_args_is_help=True)


@governance_app.command("reject")
def governance_reject(
    rollout_proposal_id: Annotated[str, typer.Argument(help="rollout proposal id")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reject a pending canary rollout proposal."""
    client = client_from(server, token)
    try:
        result = client.request("POST", f"/api/v1/governance/rollout-proposals/{rollout_proposal_id}/reject",
                                params={"reason": reason})
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()
    if json_out:
        emit_json(result)
    else:
        console.print(f"rollout proposal {result['id']}: {result['state']}", highlight=False)


@governance_app.command("proposals")
def proposals(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Retraining proposals opened by drift alerts."""
    rows: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/governance/proposals")
    if json_out:
        emit_json(rows)
        return
    console.print(table("retraining proposals", ["id", "state", "base", "devices", "new model", "validation"],
                         [[p["id"], p["state"], cell(p["base_model_version"]), ", ".join(p["device_ids"]),
                           cell(p["new_model_version"]), validation_summary(p["validation"])] for p in rows]))


def validation_summary(numbers: dict[str, Any]) -> str:
    if not numbers:
        return "-"
    if numbers.get("task") == "detection":
        return (f"mAP@0.5 old test {numbers.get('old_test_map_50_before')}→{numbers.get('old_test_map_50_after')}, "
                f"drift {numbers.get('drift_map_50_before')}→{numbers.get('drift_map_50_after')}")
    return (f"old test {numbers.get('old_test_accuracy_before')}→{numbers.get('old_test_accuracy_after')}, "
            f"drift {numbers.get('drift_accuracy_before')}→{numbers.get('drift_accuracy_after')}")


@governance_app.command("retrain")
def retrain(proposal_id: str,
            epochs: Annotated[int | None, typer.Option(help="default: 6 for a classifier, the base detector's own "
                                                            "for a detector")] = None,
            no_wait: NoWaitOpt = False, server: ServerOpt = DEFAULT_SERVER,
            token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Retrain as a job: new dataset version, training, validation and (on success) a rollout proposal.

    Prints the job id and watches it to the end (Ctrl-C stops watching, not the job); --no-wait returns at once.
    """
    query = f"?epochs={epochs}" if epochs is not None else ""
    job = call(server, token, "POST", f"/api/v1/governance/proposals/{proposal_id}/retrain{query}")
    if no_wait:
        if json_out:
            emit_json(job)
        else:
            console.print(f"job {job['job_id']} queued (edgefleet jobs watch {job['job_id']})", highlight=False)
        return
    if not json_out:
        err_console.print(f"job {job['job_id']} queued", highlight=False)
    job = watch_job(server, token, job["job_id"], json_out=json_out)
    proposal = job["result"].get("proposal") if job["state"] == "succeeded" else None
    if proposal is not None and not json_out:
        console.print(f"proposal {proposal['id']}: {proposal['state']}; {validation_summary(proposal['validation'])}")
    finish_watch(job, json_out=json_out)


@governance_app.command("approve")
def approve(rollout_proposal_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Approve a pending canary rollout proposal (starts the rollout)."""
    result = call(server, token, "POST", f"/api/v1/governance/rollout-proposals/{rollout_proposal_id}/approve")
    console.print(f"rollout proposal {result['id']}: {result['state']} (rollout {result['rollout_id']})")


@governance_app.command("audit")
def audit(
    subject: Annotated[str | None, typer.Option(help="only events about this id (sample, rollout, model, ...)")] = None,
    action: Annotated[str | None, typer.Option(help="only this action; ending in '.' a prefix, e.g. 'rollout.'")] = None,
    actor: Annotated[str | None, typer.Option(help="only this actor, e.g. 'operator:<token name>'")] = None,
    limit: Annotated[int, typer.Option(help="the newest this many events")] = 100,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The audit log: who (the API token's name, or the monitor) did each step, when. Newest last."""
    events: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/governance/audit", subject_id=subject,
                                         action=action, actor=actor, limit=limit)
    if json_out:
        emit_json(events)
        return
    console.print(table("audit", ["at", "actor", "action", "subject"],
                         [[str(e["at"])[:19], e["actor"], e["action"], e["subject_id"]] for e in events]))
