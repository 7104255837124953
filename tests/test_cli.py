"""The CLI: output formats, exit codes and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeeff.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_models_json_lists_family():
    result = run("models", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows][:2] == ["b0", "b1"]
    assert rows[0]["params"] == pytest.approx(5.3e6, rel=0.03)


def test_models_phi_range():
    result = run("models", "--phi", "0:1:0.5", "--json")
    assert result.exit_code == 0, result.output
    assert [r["phi"] for r in json.loads(result.output)] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("args,message", [
    (["export", "--model", "b9"], "unknown model 'b9'"),
    (["export", "--model", "b0", "--target", "coreml"], "unknown target 'coreml'"),
    (["export", "--model", "b0", "--resolution", "7"], "invalid resolution 7"),
    (["export", "--checkpoint", "/nonexistent/model.pt"], "checkpoint not found"),
    (["export", "--phi", "-1"], "invalid phi -1"),
    (["export", "--model", "b0", "--calib", "/nonexistent/photos", "--target", "onnx"], "image folder not found"),
    (["models", "--phi", "0:7"], "invalid --phi range"),
    (["predict", "/nonexistent/a.onnx", "x.jpg"], "artifact not found"),
    (["predict", "README.md", "x.jpg"], "unknown artifact type .md"),
])
def test_bad_input_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


def test_unknown_model_suggests_closest():
    result = run("export", "--model", "lite9")
    assert "did you mean" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run("export", "--model", "b0", "--resolution", "64", "--target", "onnx", "--output", str(locked / "x"))
    assert result.exit_code == 2
    assert "not writable" in result.output


def test_output_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = run("export", "--model", "b0", "--resolution", "64", "--target", "onnx", "--output", str(target / "sub"))
    assert result.exit_code == 2
    assert "not writable" in result.output


@pytest.mark.slow
def test_export_and_predict_subprocess(tmp_path, small_photos, cat_photo):
    """The installed console script, as a user runs it: export ONNX FP32, then predict."""
    edgeeff = [sys.executable, "-m", "edgeeff"]
    export = subprocess.run([*edgeeff, "export", "--model", "b0", "--resolution", "64", "--target", "onnx",
                             "--calib", str(small_photos), "--output", str(tmp_path), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr
    assert "UNTRAINED WEIGHTS" in export.stderr
    records = json.loads(export.stdout)
    assert records[0]["artifact"] == "b0-64px-fp32-untrained.onnx"
    predict = subprocess.run([*edgeeff, "predict", str(tmp_path / records[0]["artifact"]), str(cat_photo), "--json"],
                             capture_output=True, text=True, timeout=300)
    assert predict.returncode == 0, predict.stderr
    assert len(json.loads(predict.stdout)["predictions"][0]["top"]) == 5
    assert "UNTRAINED WEIGHTS" in predict.stderr
