"""Atomic file output: a failed write leaves the earlier file whole, and no temporary behind."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from robopolicy.files import atomic_save_figure, atomic_write_json, atomic_write_text  # noqa: E402


def test_text_and_json_round_trip(tmp_path) -> None:
    atomic_write_text(tmp_path / "a" / "note.txt", "hello")
    assert (tmp_path / "a" / "note.txt").read_text() == "hello"
    atomic_write_json(tmp_path / "data.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "data.json").read_text()) == {"x": [1, 2]}


def test_a_failed_figure_keeps_the_earlier_file(tmp_path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = atomic_save_figure(fig, tmp_path / "plot.png", dpi=50)
    earlier = path.read_bytes()
    assert earlier.startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        atomic_save_figure(fig, tmp_path / "plot.png", dpi=-1)
    assert path.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    plt.close(fig)
