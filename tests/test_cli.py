"""The `rowrnn` command line: help, exit codes, one-line errors with no traceback."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, write_mnist_dir


def rowrnn(*args, env=None, cwd=None):
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rowrnn", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=600,
    )


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_the_commands():
    result = rowrnn("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate"):
        assert command in result.stdout


def test_train_help_shows_options():
    result = rowrnn("train", "--help")
    assert result.returncode == 0
    for option in ("--data", "--out", "--epochs", "--batch-size", "--lr", "--seed", "--limit"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--epochs", "0"], ["--epochs", "greater than or equal to 1"]),
        (["train", "--lr", "-1"], ["--lr"]),
        (["train", "--batch-size", "many"], ["--batch-size", "valid integer"]),
        (["train", "--limit", "1"], ["--limit"]),
        (["train", "--bogus"], ["--bogus"]),
        (["frobnicate"], ["frobnicate"]),
    ],
    ids=["epochs-zero", "lr-negative", "batch-not-int", "limit-one", "unknown-option", "unknown-command"],
)
def test_bad_options_are_one_line_exit_2(args, needles):
    assert_one_line_error(rowrnn(*args), *needles)


def test_missing_data_directory(tmp_path):
    assert_one_line_error(rowrnn("train", "--data", tmp_path / "nope", "--out", tmp_path / "o"), "nope", "does not exist")


def test_data_directory_missing_a_file(tmp_path):
    directory = write_mnist_dir(tmp_path / "d")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_one_line_error(rowrnn("train", "--data", directory), "t10k-labels-idx1-ubyte")


def test_env_var_points_at_data(tmp_path):
    result = rowrnn("train", "--out", tmp_path / "o", env={"ROWRNN_DATA": str(tmp_path / "envdir")})
    assert_one_line_error(result, "envdir")


def test_unwritable_out(tmp_path, mnist_dir):
    (tmp_path / "f").write_text("x")
    result = rowrnn("train", "--data", mnist_dir, "--out", tmp_path / "f" / "sub", "--limit", "100", "--epochs", "1")
    assert_one_line_error(result, "cannot write")


def test_evaluate_missing_model(tmp_path):
    assert_one_line_error(rowrnn("evaluate", "--model", tmp_path / "none.keras"), "none.keras", "no such model")


@pytest.mark.slow
def test_train_then_evaluate_agree(tmp_path, mnist_dir):
    out = tmp_path / "art"
    result = rowrnn("train", "--data", mnist_dir, "--out", out, "--limit", "3000", "--epochs", "1", "--hidden-units", "32")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    evaluated = rowrnn("evaluate", "--model", out / "model.keras", "--data", mnist_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert len(report["confusion_matrix"]) == 10 and sum(map(sum, report["confusion_matrix"])) == 10_000
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    text = rowrnn("evaluate", "--model", out / "model.keras", "--data", mnist_dir)
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in text.stdout
