"""The bad-input battery: every command and the library API, against every way an input goes wrong.

Every case must end in one clear line that names the input and the problem — on the command line
exit code 2 with nothing else on stderr and no traceback; in the API an `InputError` (a
`ValueError`) — and must leave every file in the workspace exactly as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, foreign_model, idx_bytes, rowrnn, synthetic_digits, write_mnist_dir
from rowrnn import cli
from runtime import InputError, Predictor, preprocess_image
from runtime.idx import read_idx
from runtime.inputs import load_input

FLAVOURS = ("missing", "empty", "directory", "wrong-format", "truncated", "random-bytes")
SUFFIX = {"onnx": ".onnx", "keras": ".keras", "png": ".png", "jpeg": ".jpg", "npy": ".npy", "idx": "-idx3-ubyte.gz"}
WRONG_FORMAT_SOURCE = {"onnx": "png", "keras": "npy", "png": "onnx", "jpeg": "npy", "npy": "png", "idx": "png"}
# What the one line must say about each kind of file gone wrong in each way.
PROBLEM = {
    "missing": "no such file",
    "empty": "file is empty",
    "directory": "is a directory",
    ("onnx", "broken"): "not a loadable ONNX model|not an ONNX model",
    ("keras", "broken"): "not a Keras model file",
    ("png", "broken"): "not a recognised image file|truncated image",
    ("jpeg", "broken"): "not a recognised image file|truncated image",
    ("npy", "broken"): r"not a \.npy file|not a readable \.npy array",
    ("idx", "broken"): "not an IDX file|truncated gzip data",
}


def problem(kind: str, flavour: str) -> str:
    return PROBLEM.get(flavour) or PROBLEM[(kind, "broken")]


# ---------------------------------------------------------------- the workspace


@dataclass(frozen=True)
class Workspace:
    root: Path
    good: dict[str, Path]  # a valid file of every kind
    mnist: Path  # a directory with four valid (small) IDX files

    def bad(self, kind: str, flavour: str, name: str | None = None) -> Path:
        """A `kind` file gone wrong in the way `flavour` says, in a fresh place."""
        path = self.root / "bad" / f"{name or kind + '-' + flavour}{SUFFIX[kind]}"
        path.parent.mkdir(exist_ok=True)
        if flavour == "empty":
            path.write_bytes(b"")
        elif flavour == "directory":
            path.mkdir()
        elif flavour == "wrong-format":  # a valid file of another kind under this name
            path.write_bytes(self.good[WRONG_FORMAT_SOURCE[kind]].read_bytes())
        elif flavour == "truncated":
            data = self.good[kind].read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif flavour == "random-bytes":
            path.write_bytes(np.random.default_rng(len(str(path))).bytes(4096))
        return path  # "missing": never created

    def bad_mnist(self, flavour: str, tag: str) -> Path:
        """An MNIST directory whose training-images file has gone wrong in the way `flavour` says."""
        directory = self.root / "bad" / f"mnist-{tag}-{flavour}"
        shutil.copytree(self.mnist, directory)
        target = directory / "train-images-idx3-ubyte.gz"
        target.unlink()
        made = self.bad("idx", flavour, name=f"mnist-{tag}-{flavour}-file")
        if made.exists():
            shutil.move(made, target)
        return directory

    def snapshot(self) -> dict[str, str]:
        """Every file's content hash and every directory: what a failed command must not change."""
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(self.root.rglob("*"))
        }


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_keras_model, exported) -> Workspace:
    root = tmp_path_factory.mktemp("battery")
    images, _ = synthetic_digits(3)
    good = {
        "keras": root / "model.keras",
        "onnx": root / "model.onnx",
        "png": root / "digit.png",
        "jpeg": root / "digit.jpg",
        "npy": root / "digits.npy",
        "idx": root / "digits-idx3-ubyte.gz",
    }
    shutil.copy(tiny_keras_model, good["keras"])
    shutil.copy(exported.onnx_path, good["onnx"])
    Image.fromarray(images[0]).save(good["png"])
    Image.fromarray(images[0]).save(good["jpeg"])
    np.save(good["npy"], images)
    good["idx"].write_bytes(gzip.compress(idx_bytes(images)))
    # outputs from earlier runs that every failing command must leave alone
    (root / "artifacts").mkdir()
    for name in ("model.keras", "metrics.json", "history.csv", "curves.png"):
        (root / "artifacts" / name).write_bytes(b"previous " + name.encode())
    for name in ("out.onnx", "out.parity.json", "out.int8.onnx", "confusion.png", "bench.json"):
        (root / name).write_bytes(b"previous " + name.encode())
    (root / "a-file").write_text("not a directory")
    return Workspace(root, good, write_mnist_dir(root / "mnist"))


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """`rowrnn ARGV` in this process (TensorFlow is loaded once): exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_refused(ws: Workspace, argv: list, needles: list[str], capsys) -> None:
    before = ws.snapshot()
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith("rowrnn: error: ") and "Traceback" not in err
    for needle in needles:
        assert re.search(needle, lines[0]), (needle, lines[0])
    assert ws.snapshot() == before, "a failing command changed the workspace"


# ---------------------------------------------------------------- commands x bad files

FILE_CASES = [
    *[("predict-model", "onnx", f) for f in FLAVOURS],
    *[("info", "onnx", f) for f in FLAVOURS],
    *[("predict-input", kind, f) for kind in ("png", "jpeg", "npy", "idx") for f in FLAVOURS],
    *[("evaluate-model", "keras", f) for f in FLAVOURS],
    *[("export-model", "keras", f) for f in FLAVOURS],
]


def file_argv(ws: Workspace, role: str, bad: Path) -> list:
    return {
        "predict-model": ["predict", ws.good["png"], "--model", bad],
        "info": ["info", bad],
        "predict-input": ["predict", bad, "--model", ws.good["onnx"]],
        "evaluate-model": ["evaluate", "--model", bad, "--data", ws.mnist],
        "export-model": ["export", ws.root / "out.onnx", "--model", bad],
    }[role]


@pytest.mark.parametrize("role, kind, flavour", FILE_CASES, ids=[f"{r}-{k}-{f}" for r, k, f in FILE_CASES])
def test_command_refuses_a_bad_file(ws, capsys, role, kind, flavour):
    bad = ws.bad(kind, flavour, name=f"{role}-{kind}-{flavour}")
    assert_refused(ws, file_argv(ws, role, bad), [re.escape(bad.name), problem(kind, flavour)], capsys)


DATA_CASES = [(command, f) for command in ("train", "evaluate") for f in FLAVOURS]


@pytest.mark.parametrize("command, flavour", DATA_CASES, ids=[f"{c}-data-file-{f}" for c, f in DATA_CASES])
def test_command_refuses_a_bad_mnist_file(ws, capsys, command, flavour):
    directory = ws.bad_mnist(flavour, tag=command)
    argv = (
        ["train", "--data", directory, "--out", ws.root / "artifacts"]
        if command == "train"
        else ["evaluate", "--model", ws.good["keras"], "--data", directory]
    )
    needles = ["train-images-idx3-ubyte", "missing MNIST file" if flavour == "missing" else problem("idx", flavour)]
    assert_refused(ws, argv, needles, capsys)


DIRECTORY_CASES = {
    "no-such-directory": (lambda ws: ws.root / "nowhere", "does not exist"),
    "a-file": (lambda ws: ws.root / "a-file", "not a directory"),
    "empty-directory": (lambda ws: ws.root / "bad" / "empty-dir", "missing MNIST file"),
    "small-files": (lambda ws: ws.mnist, "expected 60000 MNIST train images, found 120"),
}


@pytest.mark.parametrize("case", list(DIRECTORY_CASES))
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_command_refuses_a_bad_data_directory(ws, capsys, command, case):
    make, needle = DIRECTORY_CASES[case]
    directory = make(ws)
    if case == "empty-directory":
        directory.mkdir(parents=True, exist_ok=True)
    argv = (
        ["train", "--data", directory, "--out", ws.root / "artifacts"]
        if command == "train"
        else ["evaluate", "--model", ws.good["keras"], "--data", directory]
    )
    assert_refused(ws, argv, [re.escape(directory.name), needle], capsys)


# ---------------------------------------------------------------- arrays a user hands `predict`

ARRAYS = {
    "int32": (np.zeros((2, 28, 28), np.int32), "dtype int32"),
    "bool": (np.zeros((28, 28), bool), "dtype bool"),
    "complex": (np.zeros((28, 28), np.complex64), "dtype complex64"),
    "shape-28x27": (np.zeros((28, 27), np.float32), r"shape \(28, 27\)"),
    "shape-4d": (np.zeros((2, 3, 28, 28), np.float32), r"shape \(2, 3, 28, 28\)"),
    "scalar": (np.float32(0.5), r"shape \(\)"),
    "nan": (np.full((28, 28), np.nan, np.float32), "NaN"),
    "inf": (np.full((2, 28, 28), -np.inf), "NaN or infinite"),
    "unscaled-floats": (np.full((28, 28), 255.0, np.float32), r"\[0, 1\], got range \[255, 255\]"),
    "negative": (np.full((28, 28), -0.5, np.float64), r"\[0, 1\]"),
    "empty-batch": (np.zeros((0, 28, 28), np.uint8), "empty batch"),
}


@pytest.mark.parametrize("case", list(ARRAYS))
def test_predict_refuses_a_bad_array_file(ws, capsys, case):
    array, needle = ARRAYS[case]
    path = ws.root / "bad" / f"array-{case}.npy"
    path.parent.mkdir(exist_ok=True)
    np.save(path, array)
    assert_refused(ws, ["predict", path, "--model", ws.good["onnx"]], [re.escape(path.name), needle], capsys)


@pytest.mark.parametrize("case", list(ARRAYS))
def test_predictor_refuses_a_bad_array(ws, case):
    array, needle = ARRAYS[case]
    with pytest.raises(InputError, match=needle):
        Predictor(ws.good["onnx"]).predict(array)


# ---------------------------------------------------------------- outputs that cannot be written

OUTPUT_CASES = {
    "export-out-is-a-directory": (
        lambda ws: ["export", ws.root / "artifacts", "--model", ws.good["keras"]],
        ["artifacts", "is a directory"],
    ),
    "export-out-under-a-file": (
        lambda ws: ["export", ws.root / "a-file" / "m.onnx", "--model", ws.good["keras"]],
        ["a-file", "not a directory"],
    ),
    "export-out-not-onnx": (
        lambda ws: ["export", ws.root / "m.txt", "--model", ws.good["keras"]],
        ["m.txt", r"must end in \.onnx"],
    ),
    "train-out-is-a-file": (
        lambda ws: ["train", "--data", ws.mnist, "--out", ws.root / "a-file"],
        ["a-file", "not a directory"],
    ),
    "train-out-under-a-file": (
        lambda ws: ["train", "--data", ws.mnist, "--out", ws.root / "a-file" / "out"],
        ["a-file", "not a directory"],
    ),
    "evaluate-plot-is-a-directory": (
        lambda ws: ["evaluate", "--model", ws.good["keras"], "--data", ws.mnist, "--plot", ws.root / "artifacts"],
        ["artifacts", "is a directory"],
    ),
    "evaluate-plot-under-a-file": (
        lambda ws: [
            "evaluate",
            "--model",
            ws.good["keras"],
            "--data",
            ws.mnist,
            "--plot",
            ws.root / "a-file" / "c.png",
        ],
        ["a-file", "not a directory"],
    ),
    "bench-json-is-a-directory": (
        lambda ws: ["bench", "--json", ws.root / "artifacts"],
        ["artifacts", "is a directory"],
    ),
    "bench-plot-not-png": (lambda ws: ["bench", "--plot", ws.root / "chart.txt"], ["chart.txt", r"must end in \.png"]),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_command_refuses_an_unwritable_output_before_working(ws, capsys, case):
    make_argv, needles = OUTPUT_CASES[case]
    assert_refused(ws, make_argv(ws), needles, capsys)


# ---------------------------------------------------------------- option values

OPTION_CASES = {
    "train-epochs-zero": (["train", "--epochs", "0"], ["--epochs", "greater than or equal to 1"]),
    "train-lr-negative": (["train", "--lr", "-1"], ["--lr"]),
    "train-lr-above-one": (["train", "--lr", "2"], ["--lr"]),
    "train-batch-not-a-number": (["train", "--batch-size", "many"], ["--batch-size", "integer"]),
    "train-limit-one": (["train", "--limit", "1"], ["--limit"]),
    "train-hidden-units-zero": (["train", "--hidden-units", "0"], ["--hidden-units"]),
    "export-opset-too-old": (["export", "m.onnx", "--opset", "3"], ["--opset 3"]),
    "export-atol-zero": (["export", "m.onnx", "--atol", "0"], ["--atol 0"]),
    "export-quantize-int4": (["export", "m.onnx", "--quantize", "int4"], ["int4"]),
    "export-int8-drop-negative": (["export", "m.onnx", "--max-int8-drop", "-1"], ["--max-int8-drop"]),
    "export-no-output": (["export"], ["Missing argument 'output'"]),
    "predict-no-inputs": (["predict", "--model", "model.onnx"], ["Missing argument 'inputs'"]),
    "bench-calls-zero": (["bench", "--calls", "0"], ["--calls"]),
    "bench-images-zero": (["bench", "--images", "0"], ["--images"]),
    "bench-cold-starts-zero": (["bench", "--cold-starts", "0"], ["--cold-starts"]),
    "unknown-option": (["train", "--bogus"], ["--bogus"]),
    "unknown-command": (["frobnicate"], ["frobnicate"]),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_command_refuses_a_bad_option_value(ws, capsys, case):
    argv, needles = OPTION_CASES[case]
    export_model_needed = argv[0] == "export" and len(argv) > 1
    argv = [*argv, "--model", ws.good["keras"]] if export_model_needed else argv
    assert_refused(ws, argv, [re.escape(n) for n in needles], capsys)


# ---------------------------------------------------------------- the API, file by file


def api_reader(kind: str):
    """The library function that reads a `kind` file."""
    if kind == "keras":
        from rowrnn_keras.model import load_trained_model

        return load_trained_model
    return {"onnx": Predictor, "png": preprocess_image, "jpeg": preprocess_image, "idx": read_idx, "npy": load_input}[
        kind
    ]


API_CASES = [(kind, flavour) for kind in SUFFIX for flavour in FLAVOURS]


@pytest.mark.parametrize("kind, flavour", API_CASES, ids=[f"{k}-{f}" for k, f in API_CASES])
def test_api_refuses_a_bad_file(ws, kind, flavour):
    bad = ws.bad(kind, flavour, name=f"api-{kind}-{flavour}")
    with pytest.raises(InputError, match=f"{re.escape(bad.name)}: .*({problem(kind, flavour)})"):
        api_reader(kind)(bad)


FOREIGN_MODELS = {  # valid ONNX files that are not rowrnn models, and what the line must say
    "input-named-x": (dict(input_name="x"), "not a rowrnn model: inputs"),
    "28x27-images": (dict(shape=(None, 28, 27)), "not a rowrnn model: inputs"),
    "32x32-images": (dict(shape=(None, 32, 32)), "not a rowrnn model: inputs"),
    "5-classes": (dict(classes=5), "not a rowrnn model: output 'logits'"),
    "no-format-version": (dict(metadata={}), "format version None"),
}


@pytest.mark.parametrize("case", list(FOREIGN_MODELS))
def test_an_onnx_model_that_is_not_rowrnns_is_refused(ws, capsys, case):
    kwargs, needle = FOREIGN_MODELS[case]
    path = foreign_model(ws.root / "bad" / f"foreign-{case}.onnx", **{"metadata": {"format_version": "1"}, **kwargs})
    with pytest.raises(InputError, match=re.escape(needle)):
        Predictor(path)
    assert_refused(ws, ["predict", ws.good["png"], "--model", path], [re.escape(path.name), re.escape(needle)], capsys)


def test_the_foreign_graph_loads_when_it_meets_the_contract(tmp_path):
    """The control for the cases above: the same graph, claiming the contract, loads."""
    Predictor(foreign_model(tmp_path / "ok.onnx", metadata={"format_version": "1"}))


# ---------------------------------------------------------------- the real console script

SUBPROCESS_SAMPLE = {
    "train": lambda ws: ["train", "--data", ws.root / "nowhere"],
    "evaluate": lambda ws: ["evaluate", "--model", ws.root / "none.keras"],
    "export": lambda ws: ["export", ws.root / "m.onnx", "--model", ws.bad("keras", "truncated", name="sub")],
    "info": lambda ws: ["info", ws.bad("onnx", "random-bytes", name="sub")],
    "predict": lambda ws: ["predict", ws.bad("png", "truncated", name="sub"), "--model", ws.good["onnx"]],
    "bench": lambda ws: ["bench", "--calls", "-5"],
    "anytime": lambda ws: ["anytime", "--model", ws.bad("onnx", "random-bytes", name="sub")],
}


@pytest.mark.parametrize("command", list(SUBPROCESS_SAMPLE))
def test_the_console_script_behaves_the_same(ws, command):
    """One case per command through `python -m rowrnn`, as a user's shell runs it."""
    before = ws.snapshot()
    assert_one_line_error(rowrnn(*SUBPROCESS_SAMPLE[command](ws)))
    assert ws.snapshot() == {**before, **{k: v for k, v in ws.snapshot().items() if k.startswith("bad/sub")}}
