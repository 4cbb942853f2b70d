"""onnxruntime-web, the engine the page runs the model with in the browser: pinned, checked, cached.

Its WebAssembly file is 14.8 MB, so it is not in the repository or the wheel: the first
`rowrnn site` (or .ci/run, before the tests) has `npm pack` fetch the package from the npm
registry once, checks the tarball against the integrity hash pinned here and each file it keeps
against its pinned sha256, and keeps only those three files (15 MB of the package's 151) in a
cache directory. Every later use (a site, `rowrnn serve`'s page, the tests) reads the cache and
checks the files again; nothing is fetched at serve or test time.

Only the WASM build: `ort.wasm.min.mjs`, its Emscripten loader and `ort-wasm-simd-threaded.wasm`.
The default bundle (`ort.min.mjs`) carries WebGPU/WebGL glue that needs `unsafe-eval` in the page's
Content-Security-Policy; this build needs only `wasm-unsafe-eval`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from runtime.errors import CheckFailed, InputError, one_line
from runtime.files import sha256_file, write_bytes_atomic

PACKAGE = "onnxruntime-web"
VERSION = "1.31.1"
# npm's own `dist.integrity` of the tarball (`npm view onnxruntime-web@1.31.1 dist.integrity`)
TARBALL_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
# The files the page needs (package/dist/NAME in the tarball) and their sha256.
FILES = {
    "ort.wasm.min.mjs": "c21d9c326d453a4a61398270c804d5979e118540597cb0c07f7b3d64e6098234",
    "ort-wasm-simd-threaded.mjs": "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
    "ort-wasm-simd-threaded.wasm": "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
}
ENTRY = "ort.wasm.min.mjs"  # what the page imports
LICENSE = "MIT (Microsoft Corporation)"
NPM_TIMEOUT_S = 600
CACHE_ENV = "ROWRNN_CACHE"


def cache_root() -> Path:
    """$ROWRNN_CACHE, else $XDG_CACHE_HOME/rowrnn, else ~/.cache/rowrnn."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rowrnn"


def cache_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / f"{PACKAGE}-{VERSION}"


def cached_files(root: Path | None = None) -> Path | None:
    """The cache directory when it holds every file with its pinned sha256, else None."""
    directory = cache_dir(root)
    for name, digest in FILES.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return directory


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def npm_pack(destination: Path) -> Path:
    """`npm pack onnxruntime-web@VERSION` into `destination`: the tarball, fetched by npm."""
    npm = shutil.which("npm")
    where = cache_dir()
    if npm is None:
        raise InputError(
            f"{PACKAGE} {VERSION} is not in the cache ({where}) and npm is not installed: install "
            f"Node.js's npm once so rowrnn can fetch it, or set ${CACHE_ENV} to a cache that has it"
        )
    try:
        result = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(destination), "--silent"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            cwd=destination,
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"npm could not fetch {PACKAGE}@{VERSION} within {NPM_TIMEOUT_S} s (is the npm registry reachable?)"
        ) from None
    tarball = destination / f"{PACKAGE}-{VERSION}.tgz"
    if result.returncode != 0 or not tarball.is_file():
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        reason = one_line(errors[0] if errors else f"exit {result.returncode}", 200)
        raise InputError(
            f"npm could not fetch {PACKAGE}@{VERSION} from the npm registry into the cache ({where}): {reason}"
        )
    return tarball


def unpack_checked(tarball: Path, directory: Path) -> None:
    """Check the tarball's integrity, then copy each needed file out of it after checking its sha256."""
    if sri_sha512(tarball) != TARBALL_INTEGRITY:
        raise CheckFailed(f"{tarball.name}: integrity {sri_sha512(tarball)} is not the pinned {TARBALL_INTEGRITY}")
    with tarfile.open(tarball, "r:gz") as archive:
        for name, digest in FILES.items():
            member = archive.extractfile(f"package/dist/{name}")  # read by name: no path from the archive is used
            if member is None:
                raise CheckFailed(f"{tarball.name}: package/dist/{name} is missing")
            data = member.read()
            if hashlib.sha256(data).hexdigest() != digest:
                raise CheckFailed(f"{tarball.name}: {name} does not have its pinned sha256")
            write_bytes_atomic(directory / name, data)


def ensure_web_runtime(root: Path | None = None) -> Path:
    """The directory with onnxruntime-web's WASM files: from the cache, or fetched into it by npm."""
    found = cached_files(root)
    if found is not None:
        return found
    directory = cache_dir(root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{directory}: cannot create the cache directory ({exc.strerror or exc})") from None
    with tempfile.TemporaryDirectory(prefix=".rowrnn-npm-", dir=directory) as scratch:
        unpack_checked(npm_pack(Path(scratch)), directory)
    found = cached_files(root)
    if found is None:  # another process wrote a different file in between: say so rather than serve it
        raise CheckFailed(f"{directory}: the cached files do not have their pinned sha256")
    return found
