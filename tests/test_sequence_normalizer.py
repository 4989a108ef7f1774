"""robopolicy.data.sequence and .normalizer: Diffusion Policy's window indexing exactly, batches
that match single items, reproducible and resumable shuffling, and normalisation statistics that
invert exactly, survive safetensors and fail loudly, naming the key, when broken."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.hdf5 import Episode, make_env_args, write_dataset
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.prefetch import PrefetchedBatches
from robopolicy.data.sequence import RandomBatches, SequenceWindows


def _episode(obs: dict[str, np.ndarray], actions: np.ndarray) -> Episode:
    n = len(actions)
    return Episode(
        obs=obs,
        next_obs=obs,
        actions=actions,
        rewards=np.zeros(n),
        dones=np.arange(n) == n - 1,
        states=np.zeros((n, 0)),
    )


def _counting_episode(length: int, start: float = 0.0) -> Episode:
    """obs "x" and the single action both count ``start, start + 1, ...``: values name frames."""
    values = start + np.arange(length, dtype=np.float32)[:, None]
    return _episode({"x": values}, values.copy())


def _windows_as_lists(windows: SequenceWindows) -> list[tuple[list[float], list[float]]]:
    items = [windows[i] for i in range(len(windows))]
    return [(w["obs"]["x"][:, 0].tolist(), w["actions"][:, 0].tolist()) for w in items]


# ---- windows --------------------------------------------------------------------------------
def test_windows_follow_diffusion_policy_indexing() -> None:
    windows = SequenceWindows([_counting_episode(5)], ["x"], 2, 4, 2)
    # starts -1 .. 5 - 4 + 1 = 2; before the start repeats frame 0, past the end frame 4
    assert _windows_as_lists(windows) == [
        ([0, 0], [0, 0, 1, 2]),
        ([0, 1], [0, 1, 2, 3]),
        ([1, 2], [1, 2, 3, 4]),
        ([2, 3], [2, 3, 4, 4]),
    ]


@pytest.mark.parametrize(("obs_h", "pred_h", "action_h"), [(2, 4, 2), (1, 8, 8), (3, 6, 1)])
def test_episodes_never_mix_and_each_gives_the_formula_count(obs_h, pred_h, action_h) -> None:
    lengths = (9, 12, 7)
    episodes = [_counting_episode(n, start=100.0 * i) for i, n in enumerate(lengths)]
    windows = SequenceWindows(episodes, ["x"], obs_h, pred_h, action_h)
    assert len(windows) == sum(n - pred_h + action_h + obs_h - 1 for n in lengths)
    per_episode = [0] * len(lengths)
    for obs, actions in _windows_as_lists(windows):
        (episode,) = {int(v // 100) for v in obs + actions}  # a single episode per window
        per_episode[episode] += 1
        frames = [v - 100 * episode for v in obs + actions]
        assert min(frames) >= 0 and max(frames) <= lengths[episode] - 1
    assert per_episode == [n - pred_h + action_h + obs_h - 1 for n in lengths]


def test_an_episode_shorter_than_the_horizon_gives_one_padded_window() -> None:
    windows = SequenceWindows([_counting_episode(3), _counting_episode(20, 100)], ["x"], 2, 16, 8)
    assert _windows_as_lists(windows)[0] == ([0, 0], [0, 0, 1, *[2] * 13])
    assert len(windows) == 1 + (20 - 16 + 8 + 2 - 1)


def test_get_batch_matches_items_and_images_stay_uint8() -> None:
    rng = np.random.default_rng(0)
    episodes = [
        _episode(
            {
                "image": rng.integers(0, 256, size=(n, 8, 6, 3), dtype=np.uint8),
                "pos": rng.normal(size=(n, 3)),  # float64 on disk, float32 in the windows
            },
            rng.normal(size=(n, 2)).astype(np.float32),
        )
        for n in (6, 11)
    ]
    windows = SequenceWindows(episodes, ["pos", "image"], 2, 4, 2)
    assert windows.obs_shapes == {"pos": (3,), "image": (8, 6, 3)}
    assert windows.action_dim == 2
    indices = torch.tensor([0, len(windows) - 1, 5, 5, 9])
    batch = windows.get_batch(indices)
    assert batch["obs"]["image"].dtype == torch.uint8
    assert batch["obs"]["image"].shape == (5, 2, 8, 6, 3)
    assert batch["obs"]["pos"].dtype == batch["actions"].dtype == torch.float32
    assert batch["obs"]["pos"].shape == (5, 2, 3)
    assert batch["actions"].shape == (5, 4, 2)
    for row, index in enumerate(indices.tolist()):
        item = windows[index]
        for key in ("pos", "image"):
            torch.testing.assert_close(batch["obs"][key][row], item["obs"][key], rtol=0, atol=0)
        torch.testing.assert_close(batch["actions"][row], item["actions"], rtol=0, atol=0)
    torch.testing.assert_close(windows[-1]["actions"], windows[len(windows) - 1]["actions"])
    first = episodes[0]
    np.testing.assert_array_equal(windows[0]["obs"]["image"][0], first.obs["image"][0])
    assert sorted(windows.normalizer_data()) == ["actions", "pos"]  # images are not normalised
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_from_hdf5_reads_the_requested_keys(tmp_path) -> None:
    episodes = [_counting_episode(6), _counting_episode(8, 100)]
    for episode in episodes:
        episode.obs["y"] = episode.next_obs["y"] = np.zeros((episode.num_samples, 2))
    path = write_dataset(
        tmp_path / "demos.hdf5", episodes, make_env_args("robopolicy/Lift-v0"), {"train": [1]}
    )
    windows = SequenceWindows.from_hdf5(path, ["x"], 2, 4, 2, filter_key="train")
    assert windows.obs_shapes == {"x": (1,)}
    assert _windows_as_lists(windows)[0] == ([100, 100], [100, 100, 101, 102])


def test_window_errors_name_the_problem() -> None:
    episodes = [_counting_episode(5)]
    with pytest.raises(KeyError, match=r"\['z'\].*available: \['x'\]"):
        SequenceWindows(episodes, ["x", "z"], 2, 4, 2)
    with pytest.raises(ValueError, match="action_horizon=5"):
        SequenceWindows(episodes, ["x"], 2, 4, 5)
    with pytest.raises(ValueError, match="obs_horizon=0"):
        SequenceWindows(episodes, ["x"], 0, 4, 2)
    with pytest.raises(ValueError, match="at least one episode"):
        SequenceWindows([], ["x"], 2, 4, 2)
    wider = _episode({"x": np.zeros((4, 2))}, np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"episode 1: obs\['x'\]"):
        SequenceWindows([*episodes, wider], ["x"], 2, 4, 2)


# ---- random batches -------------------------------------------------------------------------
def _batches(windows: SequenceWindows, seed: int, drop_last: bool = True) -> RandomBatches:
    return RandomBatches(windows, 6, torch.Generator().manual_seed(seed), drop_last=drop_last)


def _ids(batches: RandomBatches, count: int) -> list[list[float]]:
    """The first action of each window of the next ``count`` batches: the window's identity."""
    return [next(batches)["actions"][:, 0, 0].tolist() for _ in range(count)]


WINDOWS = SequenceWindows([_counting_episode(10), _counting_episode(9, 100)], ["x"], 1, 2, 2)


def test_batches_are_reproducible_and_cover_each_epoch() -> None:
    assert len(WINDOWS) == 19
    assert _ids(_batches(WINDOWS, 1), 9) == _ids(_batches(WINDOWS, 1), 9)
    assert _ids(_batches(WINDOWS, 1), 3) != _ids(_batches(WINDOWS, 2), 3)
    epoch = _ids(_batches(WINDOWS, 1, drop_last=False), 4)  # 6 + 6 + 6 + 1
    assert [len(b) for b in epoch] == [6, 6, 6, 1]
    assert sorted(sum(epoch, [])) == sorted(w[1][0] for w in _windows_as_lists(WINDOWS))
    assert all(len(b) == 6 for b in _ids(_batches(WINDOWS, 1), 10))  # the 19th is dropped


@pytest.mark.parametrize("consumed", [0, 2, 3, 7])
@pytest.mark.parametrize("drop_last", [True, False])
def test_resuming_gives_the_same_next_batches(consumed, drop_last) -> None:
    run = _batches(WINDOWS, 1, drop_last)
    _ids(run, consumed)
    state = run.state_dict()
    expected = _ids(run, 8)  # across several epoch boundaries
    plain = {k: v for k, v in state.items() if k != "generator_state"}
    assert json.loads(json.dumps(plain)) == plain  # the checkpoint keeps these in state.json
    assert state["generator_state"].dtype == torch.uint8

    resumed = _batches(WINDOWS, 99, drop_last)  # another seed: the state must override it
    resumed.load_state_dict(state)
    assert _ids(resumed, 8) == expected


def test_resuming_with_another_batch_size_is_refused() -> None:
    state = _batches(WINDOWS, 1).state_dict()
    other = RandomBatches(WINDOWS, 5, torch.Generator())
    with pytest.raises(ValueError, match="batch_size=6, now 5"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than batch_size=20"):
        RandomBatches(WINDOWS, 20, torch.Generator())


@pytest.mark.parametrize("consumed", [0, 3, 7])
def test_prefetched_batches_are_the_same_and_resume_from_what_was_taken(consumed) -> None:
    expected = _ids(_batches(WINDOWS, 1), consumed + 8)
    run = PrefetchedBatches(_batches(WINDOWS, 1), depth=3)
    assert _ids(run, consumed) == expected[:consumed]
    time.sleep(0.05)  # let the thread run ahead: the state must not follow it
    state = run.state_dict()
    run.close()
    resumed = PrefetchedBatches(_batches(WINDOWS, 99))
    resumed.load_state_dict(state)
    assert _ids(resumed, 8) == expected[consumed:]
    resumed.close()


def test_prefetch_errors_reach_the_training_thread() -> None:
    class Broken(RandomBatches):
        def __next__(self):
            raise OSError("disk gone")

    run = PrefetchedBatches(Broken(WINDOWS, 6, torch.Generator()))
    for _ in range(2):  # and again: the failure is kept, not waited on
        with pytest.raises(RuntimeError, match="prefetch thread failed") as info:
            next(run)
        assert isinstance(info.value.__cause__, OSError)
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(run)
    started = PrefetchedBatches(_batches(WINDOWS, 1))
    next(started)
    with pytest.raises(RuntimeError, match="before the first batch"):
        started.load_state_dict(started.state_dict())
    started.close()


# ---- normalizer -----------------------------------------------------------------------------
def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = torch.randn(50, 4, 3, generator=generator) * torch.tensor([1.0, 10.0, 0.01]) + 5
    state[..., 2] = 7.0  # a constant feature
    return {"state": state, "actions": torch.rand(200, 2, generator=generator) * 6 - 1}


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_round_trip_is_exact(mode) -> None:
    normalizer = Normalizer.fit(_data(), mode=mode)
    for key, x in _data().items():
        y = normalizer.normalize(key, x)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(normalizer.unnormalize(key, y), x, rtol=0, atol=1e-5)
    data = {**_data(), "image": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)}
    round_trip = normalizer.unnormalize_dict(normalizer.normalize_dict(data))
    assert round_trip["image"] is data["image"]  # keys without statistics pass through
    torch.testing.assert_close(round_trip["state"], data["state"], rtol=0, atol=1e-5)


def test_limits_map_the_extremes_to_one_and_constants_to_zero() -> None:
    data = _data()
    normalizer = Normalizer.fit(data)
    actions = normalizer.normalize("actions", data["actions"])
    torch.testing.assert_close(actions.amin(0), -torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(actions.amax(0), torch.ones(2), rtol=0, atol=1e-6)
    state = normalizer.normalize("state", data["state"])
    torch.testing.assert_close(state[..., 2], torch.zeros(50, 4), rtol=0, atol=0)
    assert state[..., :2].abs().max() <= 1 + 1e-6
    gaussian = Normalizer.fit(data, mode={"state": "gaussian"}).normalize("state", data["state"])
    torch.testing.assert_close(gaussian[..., :2].reshape(-1, 2).std(0, correction=0), torch.ones(2))
    assert (gaussian[..., 2] == 0).all()


def test_statistics_survive_safetensors_and_device_moves(tmp_path) -> None:
    normalizer = Normalizer.fit(_data(), mode={"actions": "gaussian"})
    save_file(normalizer.state_dict(), tmp_path / "normalizer.safetensors")
    loaded = Normalizer.from_state_dict(load_file(tmp_path / "normalizer.safetensors"))
    assert loaded.keys == normalizer.keys == ["actions", "state"]
    x = _data()["actions"]
    torch.testing.assert_close(loaded.normalize("actions", x), normalizer.normalize("actions", x))
    moved = normalizer.to(torch.float64)  # buffers follow the module
    assert moved.normalize("actions", x.double()).dtype == torch.float64


def test_broken_statistics_name_the_key() -> None:
    state = Normalizer.fit(_data()).state_dict()
    with pytest.raises(ValueError, match="'actions'.*not finite"):
        Normalizer.from_state_dict({**state, "actions__offset": torch.full((2,), float("nan"))})
    with pytest.raises(ValueError, match="'state'.*zeros"):
        Normalizer.from_state_dict({**state, "state__scale": torch.zeros(3)})
    without_scale = {k: v for k, v in state.items() if k != "actions__scale"}
    with pytest.raises(ValueError, match="'actions' lack the scale"):
        Normalizer.from_state_dict(without_scale)
    with pytest.raises(ValueError, match="unexpected normalizer entry 'stats.actions'"):
        Normalizer.from_state_dict({**state, "stats.actions": torch.ones(2)})


def test_fit_and_use_errors() -> None:
    with pytest.raises(ValueError, match="'robot/pos' may contain only"):
        Normalizer.fit({"robot/pos": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="'actions' contains NaN"):
        Normalizer.fit({"actions": torch.tensor([[0.0], [float("nan")]])})
    with pytest.raises(ValueError, match="'median' for 'actions'"):
        Normalizer.fit(_data(), mode={"actions": "median"})
    normalizer = Normalizer.fit(_data())
    with pytest.raises(KeyError, match="'pos'"):
        normalizer.normalize("pos", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="'actions' has shape \\(4, 3\\)"):
        normalizer.normalize("actions", torch.zeros(4, 3))
