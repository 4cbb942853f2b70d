"""The model that ships inside the package: it meets the contract, scores what its metadata says
on real MNIST, and works right after `pip install .` with no model argument and no TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import onnx
import pytest

from runtime import BUNDLED_MODEL, Predictor

REPO = Path(__file__).resolve().parents[1]


def test_bundled_model_meets_the_contract():
    from export.validate import check_contract

    check_contract(onnx.load(BUNDLED_MODEL))
    predictor = Predictor()  # no path: the bundled model
    assert predictor.path == BUNDLED_MODEL
    meta = predictor.metadata
    assert len(meta["source_model_sha256"]) == 64 and float(meta["test_accuracy"]) >= 0.99
    parity = json.loads(meta["parity"])
    assert parity["passed"] and parity["argmax_agreement"] == 1.0 and parity["images"] == 10_000
    assert "/" not in parity["inputs"]  # no path of the machine that exported it
    report = json.loads(BUNDLED_MODEL.with_name("mnist.parity.json").read_text())
    assert report["passed"] and report["int8"]["accuracy_drop"] <= 0.005  # built with --quantize int8
    assert 250_000 < BUNDLED_MODEL.stat().st_size < 450_000  # the fp32 file, ~330 KB


def test_bundled_model_scores_what_its_metadata_says(mnist):
    predictor = Predictor()
    accuracy = float((predictor.predict(mnist.test_images).labels == mnist.test_labels).mean())
    assert accuracy >= 0.99
    assert f"{accuracy:.6f}" == predictor.metadata["test_accuracy"]  # exactly, as recorded at export


def light_site_packages(target: Path) -> Path:
    """A directory with links to the plain install's dependencies only (numpy, onnxruntime,
    onnx, typer, pillow and what they need) and the build tools: a fresh venv that cannot
    reach PyPI sees these and nothing else (no TensorFlow, no web stack)."""
    target.mkdir()
    wanted, seen = ["numpy", "onnxruntime", "onnx", "typer", "pillow", "setuptools", "wheel"], set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for requirement in distribution.requires or []:
            if "extra ==" not in requirement:
                wanted.append(
                    requirement.split(";")[0]
                    .split("[")[0]
                    .split("<")[0]
                    .split(">")[0]
                    .split("=")[0]
                    .split("!")[0]
                    .split("~")[0]
                    .strip()
                )
        site = Path(distribution.locate_file(""))
        for entry in {Path(str(f)).parts[0] for f in distribution.files or []}:
            source, link = site / entry, target / entry
            if source.exists() and not link.exists() and not entry.endswith(".pth") and entry != "..":
                link.symlink_to(source)
    return target


@pytest.mark.slow
def test_fresh_venv_plain_install_predicts_with_no_model_argument(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    farm = light_site_packages(tmp_path / "light")
    (site / "light.pth").write_text(f"{farm}\n")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROWRNN_DATA")}
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and the
    # other test worker runs in the checkout
    source = shutil.copytree(
        REPO,
        tmp_path / "source",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"
        ),
    )
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "runtime" / "py.typed").is_file()  # users' type checkers see the runtime's types
    assert (
        subprocess.run(
            [str(python), "-c", "import tensorflow"], capture_output=True, cwd=tmp_path, timeout=60
        ).returncode
        != 0
    )

    from PIL import Image, ImageDraw

    image = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(image).line([(100, 30), (102, 170)], fill=0, width=16)  # a "1"
    image.save(tmp_path / "one.png")
    result = subprocess.run(
        [str(venv / "bin" / "rowrnn"), "predict", "one.png"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    source, index, label, confidence = result.stdout.split()
    assert (source, index, label) == ("one.png", "0", "1") and float(confidence) > 0.5
    installed = subprocess.run(
        [str(python), "-c", "import runtime; print(runtime.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    ).stdout
    assert str(venv) in installed  # the installed package, with its model, not the checkout
