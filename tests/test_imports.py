"""The dependency table: which of our packages, and which heavy libraries, each package may import.

Read from the source (every `import` and `from ... import`, at any depth, lazy ones included), so a
code path that no other test runs is covered too. The running processes are checked beside the
code that runs them: `test_runtime` (the runtime API and `rowrnn predict` load no TensorFlow),
`test_serve` (a running server loads the light runtime only).
"""

import ast
from pathlib import Path

import pytest

from helpers import REPO
from rowrnn.extras import JAX_EXTRA, SERVE_EXTRA, TRAINING_EXTRA

OURS = {"runtime", "serve", "export", "rowrnn_keras", "rowrnn"}
TRAINING_STACK = set(TRAINING_EXTRA) | set(JAX_EXTRA)  # what the train and jax extras install
WEB_STACK = set(SERVE_EXTRA) | {"google"}  # what the serve extra installs (google: protobuf)
# package -> (our packages it may import, third-party packages it must not import)
RULES = {
    "runtime": ({"runtime"}, TRAINING_STACK | WEB_STACK),  # apps embed it: the plain install has neither extra
    "serve": ({"serve", "runtime"}, TRAINING_STACK),  # the light install serves
    "export": ({"export", "runtime", "rowrnn_keras"}, set()),
    "rowrnn_keras": ({"rowrnn_keras", "runtime"}, set()),
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    allowed_ours, forbidden = RULES[package]
    return [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for line, name in imported_packages(path)
        if (name in OURS and name not in allowed_ours) or name in forbidden
    ]


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_package_imports_only_what_the_table_allows(package):
    assert (REPO / package).is_dir()
    assert violations(package) == []


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The scan itself: lazy, aliased and dotted imports are all found; relative ones are not ours."""
    source = tmp_path / "m.py"
    source.write_text(
        "import os, tensorflow as tf\nfrom export.api import x\n"
        "def f():\n    import serve.app\n    from . import sibling\n"
    )
    assert imported_packages(source) == [(1, "os"), (1, "tensorflow"), (2, "export"), (4, "serve")]
