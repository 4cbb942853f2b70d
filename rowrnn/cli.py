"""`rowrnn` commands. Each one parses options, calls a library function, prints the result.

Exit codes: 0 ok, 1 a check failed (e.g. parity), 2 bad input or usage, 130 interrupted.
Heavy packages (TensorFlow, tf2onnx) are imported inside the commands that need them, so
`rowrnn predict` and `rowrnn info` start fast and work with the plain install.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from runtime.errors import CheckFailed, InputError

app = typer.Typer(
    name="rowrnn",
    help="Train a row-by-row LSTM MNIST classifier, export it to ONNX, run it with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DataOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data",
        help="Directory with the four MNIST IDX files (default: $ROWRNN_DATA, else Keras's download).",
    ),
]
DEFAULT_MODEL = Path("artifacts/model.keras")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Mute C++ log lines TensorFlow prints at import and device set-up.

    TF_CPP_MIN_LOG_LEVEL no longer silences them (absl logs before InitializeLog; tensorflow
    issue #100442), and they would bury the one-line errors this CLI promises.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def needs_training_extra():
    """Import the Keras side (quietly), or explain which extra installs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with native_stderr_silenced():
            import rowrnn_keras.train as train_module
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs too; do it while muted
    except ModuleNotFoundError as exc:
        raise InputError(
            f"this command needs {exc.name}; install the training extra: pip install 'rowrnn[train]'"
        ) from None
    return train_module


@app.command()
def train(
    data: DataOption = None,
    out: Annotated[Path, typer.Option(help="Directory for model.keras, metrics.json, history.csv, curves.png.")] = Path("artifacts"),
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs (early stopping may end sooner).")] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(min=0.0, max=1.0, help="Peak learning rate of the warm-up + cosine schedule.")] = 1e-3,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[Optional[int], typer.Option(min=2, help="Train on the first N training images only.")] = None,
    hidden_units: Annotated[int, typer.Option(min=1)] = 128,
) -> None:
    """Train on MNIST; keep the best epoch by validation accuracy; report test accuracy."""
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.data import load_mnist

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, limit=limit,
        hidden_units=hidden_units,
    )
    mnist = load_mnist(data)  # bad data fails here, before the slow TensorFlow import
    train_module = needs_training_extra()
    metrics = train_module.run_training(config, mnist, out)
    typer.echo(
        f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}/"
        f"{metrics['epochs']}, validation {metrics['val_accuracy']:.4f}, "
        f"{metrics['train_seconds']:.0f} s); wrote {out}/"
    )


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Keras model to evaluate.")] = DEFAULT_MODEL,
    data: DataOption = None,
    plot: Annotated[Optional[Path], typer.Option(help="Confusion-matrix PNG (default: confusion.png beside the model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Test accuracy, per-class accuracy and the confusion matrix of a trained model."""
    train_module = needs_training_extra()
    from rowrnn_keras.data import load_mnist
    from rowrnn_keras.model import load_trained_model
    from rowrnn_keras.plots import save_confusion
    from rowrnn_keras.artifacts import atomic_path
    from runtime.contract import scale_pixels

    keras_model = load_trained_model(model)
    mnist = load_mnist(data)
    result = train_module.evaluate_model(keras_model, scale_pixels(mnist.test_images), mnist.test_labels)
    plot = plot or model.parent / train_module.CONFUSION_FILE
    with atomic_path(plot) as tmp:
        save_confusion(result.confusion, tmp, f"{model.name}: test accuracy {result.accuracy:.4f}")
    if as_json:
        typer.echo(json.dumps({"model": str(model), "test_images": len(mnist.test_labels), **result.to_dict(), "confusion_png": str(plot)}))
        return
    typer.echo(f"test accuracy {result.accuracy:.4f} on {len(mnist.test_labels)} images ({model})")
    typer.echo(train_module.format_evaluation(result))
    typer.echo(f"confusion matrix PNG: {plot}")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every expected failure into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="rowrnn", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors and bad option values (click's)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rowrnn`: show the help
            exc.show()
        else:
            print(f"rowrnn: error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except InputError as exc:
        print(f"rowrnn: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except CheckFailed as exc:
        print(f"rowrnn: check failed: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # e.g. `rowrnn predict ... | head`
        sys.stderr.close()
        sys.exit(0)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print("rowrnn: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
