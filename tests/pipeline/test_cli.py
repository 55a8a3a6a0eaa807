"""The pipeline CLI: --json output that scripts can parse, exit code 2 with a message on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cloud.cli import app
from cloud.pipeline.data.synth import write_synthetic_dataset


def test_data_commands_and_model_list_emit_json(cli_env: Path) -> None:
    runner = CliRunner()
    root = write_synthetic_dataset(cli_env / "data", images_per_class=12, seed=2)
    (root / "cross" / "broken.png").write_bytes(b"\x89PNG not really")

    validated = runner.invoke(app, ["data", "validate", str(root), "--json"])
    assert validated.exit_code == 0, validated.output
    report = json.loads(validated.stdout)
    assert report["excluded_files"] == ["cross/broken.png"]

    ingested = runner.invoke(app, ["data", "ingest", str(root), "--json"])
    assert ingested.exit_code == 0, ingested.output
    record = json.loads(ingested.stdout)
    assert record["id"] == report["dataset_id"] and record["excluded_count"] == 1

    listed = runner.invoke(app, ["data", "list", "--json"])
    assert [d["id"] for d in json.loads(listed.stdout)] == [record["id"]]
    models = runner.invoke(app, ["model", "list", "--json"])
    assert models.exit_code == 0 and json.loads(models.stdout) == []


def test_cli_bad_input_exits_2_with_a_message(cli_env: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--dataset", "ds-0000000000000000"])
    # Rich wraps long messages at the terminal width: compare with the line breaks folded.
    assert result.exit_code == 2 and "ingest it first" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "--dataset", "ds-nope"])
    assert result.exit_code == 2 and "is not a dataset id" in result.output
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "exactly one of --dataset" in result.output
    result = runner.invoke(app, ["build", "shapes-1", "--profile", "toaster"])
    assert result.exit_code == 2 and "unknown hardware profile" in result.output
    result = runner.invoke(app, ["model", "show", "shapes-9"])
    assert result.exit_code == 2 and "does not exist" in result.output
