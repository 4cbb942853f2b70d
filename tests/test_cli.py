"""The `rowrnn` command line: help, exit codes, one-line errors with no traceback."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from helpers import REPO, assert_one_line_error, rowrnn
from rowrnn import cli

COMMANDS = ("train", "evaluate", "export", "info", "predict", "bench", "serve", "site", "triton-repo", "anytime")


def test_help_lists_every_command():
    result = rowrnn("--help")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].strip().splitlines()]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize(
    "command, options",
    [
        ("evaluate", ["--model", "--data", "--plot", "--json"]),
        (
            "export",
            ["--model", "--data", "--opset", "--atol", "--quantize", "--max-int8-drop", "--triton-repo", "--step"],
        ),
        ("info", ["--json"]),
        ("predict", ["--model", "--json"]),
        (
            "serve",
            [
                "--host",
                "--port",
                "--name",
                "--max-batch",
                "--max-delay-ms",
                "--max-queue",
                "--max-body-mb",
                "--body-timeout-s",
                "--drain-timeout-s",
                "--max-sequences",
                "--sequence-idle-s",
                "--api-key",
                "ROWRNN_API_KEY",
                "--cors-origin",
                "--log-level",
            ],
        ),
        ("site", ["--model", "ROWRNN_CACHE"]),
        ("triton-repo", ["--name", "--max-batch", "--max-delay-ms", "--step", "--max-sequences", "--sequence-idle-s"]),
        ("anytime", ["--model", "--data", "--json", "--plot"]),
        (
            "bench",
            ["--keras", "--onnx", "--int8", "--data", "--json", "--plot", "--calls", "--images", "--cold-starts"],
        ),
    ],
)
def test_command_help_shows_its_options(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"Usage: rowrnn {command} ")
    for option in options:
        assert option in shown, option


def test_option_defaults_are_the_librarys():
    """The CLI takes its defaults from the library, so the two cannot drift apart."""
    from export.defaults import DEFAULT_ATOL, DEFAULT_MAX_INT8_DROP, DEFAULT_OPSET
    from rowrnn.bench import BenchSettings

    commands = typer.main.get_command(cli.app).commands
    defaults = {name: {p.name: p.default for p in command.params} for name, command in commands.items()}
    assert defaults["export"]["opset"] == DEFAULT_OPSET
    assert defaults["export"]["atol"] == DEFAULT_ATOL
    assert defaults["export"]["max_int8_drop"] == pytest.approx(DEFAULT_MAX_INT8_DROP * 100)  # points
    for option in ("calls", "images", "cold_starts"):
        assert defaults["bench"][option] == getattr(BenchSettings(), option), option
    from serve.settings import ServeSettings

    for option in (
        "host",
        "port",
        "grpc_port",
        "name",
        "poll_s",
        "max_batch",
        "max_delay_ms",
        "max_queue",
        "max_body_mb",
        "body_timeout_s",
        "drain_timeout_s",
        "max_sequences",
        "sequence_idle_s",
        "header_timeout_s",
        "max_connections",
        "log_level",
    ):
        assert defaults["serve"][option] == getattr(ServeSettings(), option), option
    for option in ("name", "max_batch", "max_delay_ms", "max_sequences", "sequence_idle_s"):
        assert defaults["triton-repo"][option] == getattr(ServeSettings(), option), option
    from rowrnn_keras.config import TrainConfig

    config = TrainConfig()
    for option, field in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "learning_rate"),
        ("seed", "seed"),
        ("limit", "limit"),
        ("hidden_units", "hidden_units"),
        ("backend", "backend"),
        ("distribute", "distribute"),
    ):
        assert defaults["train"][option] == getattr(config, field), option
    from rowrnn_keras.config import Cluster

    for option, field in (
        ("coordinator", "coordinator"),
        ("num_processes", "num_processes"),
        ("process_id", "process_id"),
        ("connect_timeout", "connect_timeout_s"),
        ("heartbeat_timeout", "heartbeat_timeout_s"),
    ):
        assert defaults["train"][option] == getattr(Cluster(), field), option


def unwrapped_help(command: str) -> str:
    """`rowrnn COMMAND --help` as one line: click wraps it to the terminal, hyphenated words too."""
    result = rowrnn(command, "--help")
    assert result.returncode == 0, result.stderr
    return re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(result.stdout.split()))


def test_train_help_shows_the_librarys_defaults():
    """What `rowrnn train --help` tells people is what a run without options uses."""
    from rowrnn_keras.config import TrainConfig

    config = TrainConfig()
    help_text = unwrapped_help("train")
    for option, value in (
        ("--epochs", config.epochs),
        ("--batch-size", config.batch_size),
        ("--lr", config.learning_rate),
        ("--hidden-units", config.hidden_units),
        ("--distribute", config.distribute),
    ):
        shown = re.search(rf"{option} <[^>]*>.*?\[default: ([^;\]]+)", help_text)
        assert shown and shown.group(1) == str(value), (option, shown and shown.group(0))


def test_train_help_shows_options():
    result = rowrnn("train", "--help")
    assert result.returncode == 0
    for option in ("--data", "--out", "--epochs", "--batch-size", "--lr", "--seed", "--limit"):
        assert option in result.stdout


def test_train_help_offers_what_works_on_each_backend():
    """--distribute multi-worker (tf.distribute's, broken upstream in Keras 3) is retired: help offers
    each backend's strategies and the options of a multi-process JAX run."""
    help_text = unwrapped_help("train")
    option = help_text[help_text.index("--distribute <") :]
    option = option[: option.index("[default:")]
    assert "tensorflow: none, mirrored" in option and "jax: none, data-parallel" in option, option
    assert "multi-worker" not in help_text and "TF_CONFIG" not in help_text
    for name in ("--backend", "--coordinator", "--num-processes", "--process-id", "--connect-timeout"):
        assert name in help_text, name


def test_env_var_points_at_data(tmp_path):
    result = rowrnn("train", "--out", tmp_path / "o", env={"ROWRNN_DATA": str(tmp_path / "envdir")})
    assert_one_line_error(result, "envdir")


@pytest.mark.slow
def test_train_then_evaluate_agree(tmp_path, mnist_dir):
    out = tmp_path / "art"
    result = rowrnn(
        "train", "--data", mnist_dir, "--out", out, "--limit", "3000", "--epochs", "1", "--hidden-units", "32"
    )
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


def test_export_writes_a_checked_model(tmp_path, tiny_keras_model):
    result = rowrnn("export", tmp_path / "m.onnx", "--model", tiny_keras_model, env={"ROWRNN_DATA": ""})
    assert result.returncode == 0, result.stderr
    assert "max-abs logit diff" in result.stdout and "argmax agreement 100.00%" in result.stdout
    assert (
        "graph rewrites applied: fold_input_layer, zero_initial_state, final_hidden_state; "
        "not applied: constant_reshape_shapes (no Reshape has a computed shape)"
    ) in result.stdout
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.parity.json").exists()
    info = rowrnn("info", tmp_path / "m.onnx", "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["inputs"] == [{"name": "rows", "dtype": "float", "shape": ["batch", 28, 28]}]
    assert described["ops"]["LSTM"] == 1 and described["metadata"]["format_version"] == "1"
    import tf2onnx

    assert described["producer"] == f"tf2onnx {tf2onnx.__version__}"  # not "tf2onnx 1.17.0 None"
    text = rowrnn("info", tmp_path / "m.onnx")
    assert "ops (" in text.stdout and "LSTM x1" in text.stdout and "None" not in text.stdout


def test_info_names_the_producer_without_a_missing_git_hash(tmp_path, capsys):
    """Files exported before the fix carry tf2onnx's "1.17.0 None" (no git hash in a wheel)."""
    import onnx

    from helpers import foreign_model

    model = onnx.load(foreign_model(tmp_path / "old.onnx", metadata={"format_version": "1"}))
    model.producer_name, model.producer_version = "tf2onnx", "1.17.0 None"
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", str(tmp_path / "old.onnx")])
    assert exit_info.value.code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("producer:"))
    assert line.split("   ")[0] == "producer: tf2onnx 1.17.0"


def test_predict_mixed_inputs_reports_bad_ones(tmp_path, exported):
    import numpy as np
    from PIL import Image, ImageDraw

    from helpers import idx_bytes, synthetic_digits

    image = Image.new("L", (120, 160), 240)
    ImageDraw.Draw(image).line([(60, 20), (60, 140)], fill=10, width=12)
    image.save(tmp_path / "one.png")
    images, _ = synthetic_digits(3)
    np.save(tmp_path / "three.npy", images)
    (tmp_path / "two-idx3-ubyte").write_bytes(idx_bytes(images[:2]))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    args = [
        "predict",
        tmp_path / "one.png",
        tmp_path / "bad.png",
        tmp_path / "three.npy",
        tmp_path / "two-idx3-ubyte",
        "--model",
        exported.onnx_path,
    ]
    result = rowrnn(*args, "--json")
    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(Path(r["input"]).name, r["index"]) for r in lines] == [
        ("one.png", 0),
        ("three.npy", 0),
        ("three.npy", 1),
        ("three.npy", 2),
        ("two-idx3-ubyte", 0),
        ("two-idx3-ubyte", 1),
    ]
    for record in lines:
        assert 0 <= record["label"] <= 9 and len(record["probabilities"]) == 10
        assert abs(sum(record["probabilities"]) - 1) < 1e-4
    assert result.stderr.strip().count("\n") == 0 and "bad.png" in result.stderr
    plain = rowrnn("predict", tmp_path / "one.png", "--model", exported.onnx_path)
    assert plain.returncode == 0 and plain.stdout.split("\t")[0].endswith("one.png")


@pytest.mark.parametrize("command", [["train"], ["evaluate"], ["export", "m.onnx"]])
def test_light_install_names_the_missing_extra(command, monkeypatch, capsys):
    """With only `pip install .`, TensorFlow commands say which extra to install (no traceback)."""
    import importlib.util

    from rowrnn import cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "rowrnn: error: this command needs tensorflow; install the training extra: pip install 'rowrnn[train]'"
    )


def test_predict_into_a_closed_pipe_stops_quietly(exported, tmp_path):
    """`rowrnn predict ... | head -1`: the reader leaving early is not an error (typer says 1)."""
    import numpy as np

    np.save(tmp_path / "many.npy", np.zeros((20_000, 28, 28), np.uint8))
    command = f"{sys.executable} -m rowrnn predict {tmp_path / 'many.npy'} --model {exported.onnx_path} | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


def test_without_a_model_the_bundled_one_is_used(tmp_path):
    from PIL import Image, ImageDraw

    from runtime import BUNDLED_MODEL

    info = rowrnn("info", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["path"] == str(BUNDLED_MODEL)
    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(60, 15), (62, 105)], fill=0, width=10)
    image.save(tmp_path / "one.png")
    result = rowrnn("predict", tmp_path / "one.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:3] == ["0", "1"]  # index 0, label 1
