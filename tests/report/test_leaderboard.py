"""Leaderboard from runs' metrics.json."""

import json

import pytest

from seglab.report.leaderboard import collect_runs, leaderboard_markdown, write_leaderboard


def _run(tmp_path, name, val_dice, test_dice=None, params=1000):
    d = tmp_path / name
    d.mkdir()
    payload = {
        "model": name.split("-")[0],
        "data": "hela",
        "params": params,
        "epochs": 3,
        "train_time": 120.0,
        "best": {"epoch": 3, "val_dice": val_dice, "val_iou": val_dice - 0.1},
    }
    if test_dice is not None:
        payload["test"] = {"dice": test_dice, "iou": test_dice - 0.1, "hd95": "inf"}
    (d / "metrics.json").write_text(json.dumps(payload))
    return d


def test_ranking_by_test_then_val(tmp_path):
    a = _run(tmp_path, "unet-a", 0.90, 0.93)
    b = _run(tmp_path, "unetpp-b", 0.95, 0.91)
    rows = collect_runs([a, b])
    assert [r["run"] for r in rows] == ["unet-a", "unetpp-b"] and [r["rank"] for r in rows] == [1, 2]
    c = _run(tmp_path, "fcn-c", 0.97)  # no test entry: rank all by validation Dice
    rows = collect_runs([a, b, c])
    assert [r["run"] for r in rows] == ["fcn-c", "unetpp-b", "unet-a"]
    assert rows[0]["test_hd95"] != rows[0]["test_hd95"]  # NaN


def test_markdown_and_files(tmp_path):
    rows = collect_runs([_run(tmp_path, "unet-a", 0.9, 0.93, params=1_940_000)])
    md = leaderboard_markdown(rows)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| rank | run | model") and len(lines) == 3
    assert "1.94 M" in md and "2.0 min" in md and "0.9300" in md
    md_path, html_path = write_leaderboard(rows, tmp_path / "board")
    assert md_path.read_text() == md
    assert '<td class="text">unet-a</td>' in html_path.read_text()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        collect_runs([])
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        collect_runs([tmp_path])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        collect_runs([bad])
