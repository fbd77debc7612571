"""The `troupe` CLI against the real app: run a plan file to the end, inspect, fetch."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import free_port
from troupe.cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sum_of_squares.yaml"
runner = CliRunner()


def test_says_clearly_when_nothing_answers():
    result = runner.invoke(app, ["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2
    assert "nothing answers at" in result.output and "make run" in result.output


def test_bad_plan_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("- just\n- a list\n")
    result = runner.invoke(app, ["run", "goal", "--plan", str(bad), "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "must hold a plan" in result.output


@pytest.mark.ray
def test_run_example_follow_and_fetch(troupe_app, tmp_path, monkeypatch):
    url = ["--url", troupe_app.base_url]
    monkeypatch.setenv("TROUPE_HOME", str(troupe_app.home))  # the CLI finds the local admin key there
    result = runner.invoke(app, ["run", "Report the sum of squares", "--plan", str(EXAMPLE), *url])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output and "done" in result.output
    task_id = result.output.split("task ")[1].split()[0]

    status = runner.invoke(app, ["status", task_id, *url])
    assert status.exit_code == 0 and "pass" in status.output and "right_answer" in status.output
    events = runner.invoke(app, ["events", task_id, *url])
    assert events.exit_code == 0 and "node.done" in events.output and "task.status" in events.output
    fetched = runner.invoke(app, ["artifacts", task_id, "--out", str(tmp_path), *url])
    assert fetched.exit_code == 0, fetched.output
    assert "333833500" in (tmp_path / "report.md").read_text()
    assert runner.invoke(app, ["cancel", task_id, *url]).exit_code == 2  # already done: 409
