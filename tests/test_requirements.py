"""CI cannot go green by skipping: where CI=true (or ROWRNN_REQUIRE_*) says a test's needs are
there, a missing MNIST directory, serve extra or Playwright fails the run; elsewhere it skips.

Each case runs a real test of the suite in a pytest subprocess, with the need taken away: an
empty data directory, or a module shadowed by one that refuses to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, REQUIREMENTS

REAL_DATA_TEST = "tests/test_data.py::test_real_mnist_matches_the_published_checksums"
SERVE_EXTRA_TEST = "tests/test_serve_protocol.py"
JAX_TEST = "tests/test_jax.py::test_a_process_that_cannot_reach_the_coordinator_gives_up_in_one_line"
BROWSER_TEST = "tests/test_page.py::test_drawn_digits_get_the_predictors_answer"
DATA_REASON = "real MNIST not available: $ROWRNN_DATA="


def inner_pytest(
    target: str, tmp_path: Path, env: dict[str, str], hidden: str | None = None
) -> subprocess.CompletedProcess:
    """pytest on `target` in a fresh process: CI and ROWRNN_REQUIRE_* only as `env` says, and the
    module `hidden` (if any) made unimportable."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k != "CI" and k not in REQUIREMENTS.values() and not k.startswith(("PYTEST_", "ROWRNN_DATA"))
    }
    if hidden is not None:
        shadow = tmp_path / "shadow"
        (shadow / hidden).mkdir(parents=True)
        (shadow / hidden / "__init__.py").write_text(f"raise ImportError('{hidden} hidden by test_requirements')\n")
        clean["PYTHONPATH"] = os.pathsep.join([str(shadow), *filter(None, [clean.get("PYTHONPATH")])])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            target,
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rfEs",
            "--basetemp",
            str(tmp_path / "inner"),
            "-o",
            "addopts=",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **env},
        timeout=300,
    )


def outcome(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr


@pytest.mark.parametrize(
    "env, fails, because",
    [
        ({"CI": "true"}, True, "CI=true"),
        ({"ROWRNN_REQUIRE_DATA": "1"}, True, "ROWRNN_REQUIRE_DATA=1"),
        ({"CI": "true", "ROWRNN_REQUIRE_DATA": "0"}, False, None),  # a CI job without the data opts out
        ({}, False, None),
    ],
    ids=["ci", "require-data", "ci-opted-out", "laptop"],
)
def test_missing_mnist_fails_where_required_and_skips_elsewhere(tmp_path, env, fails, because):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = inner_pytest(REAL_DATA_TEST, tmp_path, {**env, "ROWRNN_DATA": str(empty)})
    reason = f"{DATA_REASON}{empty} lacks train-images-idx3-ubyte"
    if fails:
        assert result.returncode == 1, (result.returncode, result.stdout)
        assert "1 error" in outcome(result), result.stdout
        assert reason in result.stdout and f"[required here: {because}]" in result.stdout, result.stdout
    else:
        assert result.returncode == 0, (result.returncode, result.stdout)
        assert "1 skipped" in outcome(result), result.stdout
        assert reason in result.stdout and "required here" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    "env, fails", [({"ROWRNN_REQUIRE_SERVE": "yes"}, True), ({}, False)], ids=["require-serve", "laptop"]
)
def test_missing_serve_extra_fails_where_required(tmp_path, env, fails):
    result = inner_pytest(SERVE_EXTRA_TEST, tmp_path, env, hidden="orjson")
    assert "needs the serve extra: pip install '.[serve]' (orjson hidden by test_requirements)" in result.stdout, (
        result.stdout
    )
    if fails:  # a module-level failure is a collection error: nothing of the file runs
        assert result.returncode == 2 and "1 error" in outcome(result), (result.returncode, result.stdout)
    else:  # 5: the skipped module left no test to run
        assert result.returncode == 5 and "1 skipped" in outcome(result), (result.returncode, result.stdout)


@pytest.mark.parametrize("env, fails", [({"CI": "1"}, True), ({}, False)], ids=["ci", "laptop"])
def test_missing_playwright_fails_where_required(tmp_path, env, fails):
    result = inner_pytest(BROWSER_TEST, tmp_path, env, hidden="playwright")
    assert "needs playwright (test extra) (playwright hidden by test_requirements)" in result.stdout, result.stdout
    if fails:
        assert result.returncode == 1 and "1 error" in outcome(result), (result.returncode, result.stdout)
    else:
        assert result.returncode == 0 and "1 skipped" in outcome(result), (result.returncode, result.stdout)


@pytest.mark.parametrize(
    "env, fails", [({"ROWRNN_REQUIRE_JAX": "1"}, True), ({}, False)], ids=["require-jax", "laptop"]
)
def test_missing_jax_extra_fails_where_required(tmp_path, env, fails):
    result = inner_pytest(JAX_TEST, tmp_path, env, hidden="jax")
    assert "the jax extra is not installed (pip install 'rowrnn[jax]') (jax hidden by test_requirements)" in (
        result.stdout
    ), result.stdout
    if fails:
        assert result.returncode == 1 and "1 failed" in outcome(result), (result.returncode, result.stdout)
    else:
        assert result.returncode == 0 and "1 skipped" in outcome(result), (result.returncode, result.stdout)
