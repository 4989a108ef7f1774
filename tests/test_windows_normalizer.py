"""Training windows (padding, episode boundaries, batching, resumable shuffling) and the
Normalizer (round trips, degenerate dimensions, validation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.hdf5 import Episode
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.sequence import RandomBatches, SequenceWindows


def _episode(values: np.ndarray) -> Episode:
    n = len(values)
    obs = {"x": values[:, None].astype(np.float64), "img": np.zeros((n, 4, 4, 3), np.uint8)}
    return Episode(
        obs=obs,
        next_obs=obs,
        actions=np.stack([values, -values], 1),
        rewards=np.zeros(n),
        dones=np.eye(n)[-1],
        states=np.zeros((n, 1)),
    )


def test_windows_pad_at_the_edges_and_never_cross_episodes() -> None:
    windows = SequenceWindows(
        [_episode(np.arange(5.0)), _episode(np.arange(100.0, 103.0))],
        ["x"],
        obs_horizon=2,
        pred_horizon=4,
        action_horizon=2,
    )
    # Episode of length 5: starts -1 .. 5 - 4 + 1 = 2, i.e. 4 windows; length 3: -1 .. 0, 2.
    assert len(windows) == 6
    first = windows[0]
    assert first["obs"]["x"][:, 0].tolist() == [0.0, 0.0]
    assert first["actions"][:, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    last_of_first_episode = windows[3]
    assert last_of_first_episode["obs"]["x"][:, 0].tolist() == [2.0, 3.0]
    assert last_of_first_episode["actions"][:, 0].tolist() == [2.0, 3.0, 4.0, 4.0]
    for i in range(len(windows)):
        values = torch.cat([windows[i]["obs"]["x"][:, 0], windows[i]["actions"][:, 0]])
        assert bool(torch.all(values >= 100)) or bool(torch.all(values < 100))


def test_batches_match_items_and_keep_images_uint8() -> None:
    windows = SequenceWindows([_episode(np.arange(9.0))], ["x", "img"], 2, 4, 2)
    batch = windows.get_batch(torch.tensor([0, 3, 5]))
    assert batch["obs"]["img"].dtype == torch.uint8 and batch["obs"]["img"].shape == (3, 2, 4, 4, 3)
    for row, i in enumerate([0, 3, 5]):
        torch.testing.assert_close(batch["actions"][row], windows[i]["actions"])
    assert set(windows.normalizer_data()) == {"x", "actions"}


def test_random_batches_are_reproducible_and_resume_mid_epoch() -> None:
    windows = SequenceWindows([_episode(np.arange(40.0))], ["x"], 2, 4, 2)
    a = RandomBatches(windows, 8, torch.Generator().manual_seed(1))
    it = iter(a)
    for _ in range(7):  # past an epoch boundary (41 windows -> 5 batches per epoch)
        next(it)
    state = a.state_dict()
    expected = [next(it)["actions"] for _ in range(6)]
    b = RandomBatches(windows, 8, torch.Generator().manual_seed(999))
    b.load_state_dict(state)
    got = [batch["actions"] for batch, _ in zip(iter(b), range(6), strict=False)]
    for x, y in zip(expected, got, strict=True):
        torch.testing.assert_close(x, y)


def test_window_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="nope"):
        SequenceWindows([_episode(np.arange(5.0))], ["nope"], 2, 4, 2)
    with pytest.raises(ValueError, match="action_horizon"):
        SequenceWindows([_episode(np.arange(5.0))], ["x"], 2, 4, 5)
    with pytest.raises(ValueError, match="at least one episode"):
        SequenceWindows([], ["x"], 2, 4, 2)


def test_normalizer_limits_round_trip_and_flat_dimensions(tmp_path) -> None:
    data = torch.stack([torch.linspace(-3, 5, 50), torch.full((50,), 2.0)], 1)
    norm = Normalizer.fit({"a": data})
    y = norm.normalize("a", data)
    assert y[:, 0].min() == pytest.approx(-1) and y[:, 0].max() == pytest.approx(1)
    assert torch.all(y[:, 1] == 0)  # a constant dimension maps to 0, not to inf
    torch.testing.assert_close(norm.unnormalize("a", y), data)
    gauss = Normalizer.fit({"a": data}, mode="gaussian")
    assert gauss.normalize("a", data)[:, 0].std(unbiased=False) == pytest.approx(1, abs=1e-5)
    save_file(norm.state_dict(), tmp_path / "n.safetensors")
    loaded = Normalizer.from_state_dict(load_file(tmp_path / "n.safetensors"))
    torch.testing.assert_close(loaded.normalize("a", data), y)
    assert norm.normalize_dict({"a": data, "img": data})["img"] is data


def test_normalizer_rejects_bad_statistics() -> None:
    state = Normalizer.fit({"actions": torch.randn(10, 2)}).state_dict()
    state["stats.actions.scale"] = torch.tensor([float("nan"), 1.0])
    with pytest.raises(ValueError, match="'actions' are not finite"):
        Normalizer.from_state_dict(state)
    del state["stats.actions.offset"]
    with pytest.raises(ValueError, match="'actions' lack 'offset'"):
        Normalizer.from_state_dict(state)
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.fit({"x": torch.tensor([[1.0], [float("nan")]])})
    with pytest.raises(ValueError, match="must match"):
        Normalizer.fit({"bad key": torch.zeros(3, 1)})
