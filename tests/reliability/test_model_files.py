"""Damaged or crafted model files (issue 21 items 8, 12, 13): a checkpoint whose CRC fails, a
truncated one, ``model_options`` that ask for a huge model, and ONNX files that are not ONNX or
whose external data lies outside their folder."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import seglab
from seglab.engine import checkpoint as ckpt
from seglab.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from seglab.errors import CheckpointError, MissingFileError
from tests._optional import peer

from ._faults import assert_one_line_error, run_cli


def _checkpoint(path: Path, **options: object) -> tuple[Path, dict]:
    opts = {"base_channels": 4, "depth": 2, **options}
    model = seglab.create_model("unet", in_channels=1, num_classes=1, **opts)
    state = {
        "model_name": "unet",
        "model_options": opts,
        "in_channels": 1,
        "num_classes": 1,
        "mode": "binary",
        "normalization": {"mean": [0.0], "std": [1.0]},
        "model": model.state_dict(),
    }
    return save_checkpoint(path, state), state


def _flip_a_weight_byte(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10  # one bit of one weight: torch.load alone would not notice
    path.write_bytes(bytes(data))


def test_checkpoint_with_a_bad_crc_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, state = _checkpoint(tmp_path / "best.pt")
    _flip_a_weight_byte(path, max(state["model"].values(), key=lambda t: t.numel()))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is not None  # the fault is real
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert text.startswith(f"{path} is corrupt: its entry ") and "fails the CRC-32 check" in text
    assert "use another copy" in text
    code, err_text = run_cli(capsys, "eval", "--checkpoint", str(path), "--data", "builtin:synthetic")
    assert_one_line_error(code, err_text, f"{path} is corrupt", "CRC-32")


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"is damaged: a zip archive without its directory \(a truncated copy\?\)"
    ):
        load_checkpoint(path)


def test_huge_model_options_are_refused_before_allocating(tmp_path: Path) -> None:
    path, state = _checkpoint(tmp_path / "best.pt")
    state["model_options"] = {"base_channels": 2**20, "depth": 2}  # about 39 TB of weights if built
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as err:
        load_model(path)  # a real allocation would fail with RuntimeError, not this
    text = str(err.value)
    assert f"The weights in {path} do not fit model 'unet'" in text
    assert "1048576" in text and "(were the options edited?)" in text
    state["model_options"] = {"base_channels": 4, "depth": 2}
    save_checkpoint(path, state)
    model, _ = load_model(path)  # the honest checkpoint still loads
    assert torch.equal(model.state_dict()["head.weight"], state["model"]["head.weight"])


def test_a_model_larger_than_its_saved_weights_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = _checkpoint(tmp_path / "best.pt")
    monkeypatch.setattr(ckpt, "_UNSAVED_BYTES", 0)
    del state["model"]["head.weight"]  # the model needs bytes the file does not hold
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=r"needs .* MiB but the file holds .* refusing to allocate it"):
        load_model(path)


def test_bad_model_options_name_the_checkpoint(tmp_path: Path) -> None:
    path, state = _checkpoint(tmp_path / "best.pt")
    state["model_options"] = {"base_channels": 4, "depth": 2, "up": "teleport"}
    save_checkpoint(path, state)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{path}: its model_options cannot rebuild 'unet': ") + ".*teleport"
    ):
        load_model(path)


# -- ONNX ----------------------------------------------------------------------------------------
def test_onnx_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peer("onnx")
    peer("onnxruntime")
    from seglab.inference import OnnxModel

    text_file = tmp_path / "notes.onnx"
    text_file.write_text("a text file, not a model\n" * 20)
    with pytest.raises(
        CheckpointError, match="^" + re.escape(f"{text_file} is not an ONNX model (it cannot be parsed")
    ):
        OnnxModel(text_file)
    pt_file, _ = _checkpoint(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match=r"is a zip archive, not an ONNX model .*--checkpoint"):
        OnnxModel(pt_file)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no graph"):
        OnnxModel(empty)
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 32, 32), np.float32))
    code, err = run_cli(capsys, "predict", "--onnx", str(text_file), str(image), "--out", str(tmp_path / "p"))
    assert_one_line_error(code, err, f"{text_file} is not an ONNX model", "seglab export")


def test_onnx_external_data_outside_its_folder(tmp_path: Path) -> None:
    onnx = peer("onnx")
    peer("onnxruntime")
    from seglab.inference import OnnxModel, export_onnx

    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    (tmp_path / "m").mkdir()
    plain = export_onnx(model, tmp_path / "m" / "plain.onnx", input_shape=(32, 32))
    proto = onnx.load(str(plain))
    onnx.save_model(
        proto,
        str(tmp_path / "m" / "ext.onnx"),
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=0,
    )
    assert OnnxModel(tmp_path / "m" / "ext.onnx")(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)

    def relocate(name: str, location: str) -> Path:
        crafted = onnx.load(str(tmp_path / "m" / "ext.onnx"), load_external_data=False)
        for tensor in crafted.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(crafted, str(tmp_path / "m" / name))
        return tmp_path / "m" / name

    (tmp_path / "secret.bin").write_bytes((tmp_path / "m" / "ext.bin").read_bytes())
    for location in ("../secret.bin", str(tmp_path / "secret.bin")):
        evil = relocate("evil.onnx", location)
        with pytest.raises(CheckpointError) as err:
            OnnxModel(evil)
        text = str(err.value)
        assert text.startswith(f"{evil}: tensor ") and f"keeps its data in {location!r}, outside" in text
        assert "External data must sit beside the .onnx file" in text
    (tmp_path / "m" / "link.bin").symlink_to(tmp_path / "secret.bin")  # a link out counts as outside
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        OnnxModel(relocate("link.onnx", "link.bin"))
    with pytest.raises(MissingFileError, match=r"keeps its data in 'gone.bin', which is missing"):
        OnnxModel(relocate("gone.onnx", "gone.bin"))
    (tmp_path / "m" / "short.bin").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"needs bytes up to \d+ of 'short.bin', which has 16"):
        OnnxModel(relocate("short.onnx", "short.bin"))
