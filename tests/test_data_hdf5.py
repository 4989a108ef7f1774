"""robopolicy.data.hdf5: round trips, robomimic compatibility both ways, atomic writes, and errors
that name the file and the offending key."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from robopolicy.data import (
    ROBOPOLICY_ENV_TYPE,
    DatasetError,
    DatasetWriter,
    Episode,
    dataset_info,
    list_demos,
    load_episodes,
    make_env_args,
    read_env_args,
    write_dataset,
)

LOW_DIM = ("robot0_eef_pos", "object")
IMAGE = "agentview_image"
ENV_ARGS = make_env_args("robopolicy/Lift-v0", {"control_freq": 20, "camera_size": 8})


def _episode(rng: np.random.Generator, n: int) -> Episode:
    """A random episode built the way a rollout loop would: per-step observations + final one."""
    observations = [
        {
            "robot0_eef_pos": rng.normal(size=3).astype(np.float32),
            "object": rng.normal(size=10),
            IMAGE: rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
        }
        for _ in range(n + 1)
    ]
    return Episode.from_steps(
        observations[:-1],
        actions=rng.uniform(-1, 1, size=(n, 7)).astype(np.float32),
        rewards=rng.normal(size=n),
        dones=np.arange(n) == n - 1,
        states=rng.normal(size=(n, 12)),
        final_observation=observations[-1],
    )


def _assert_episodes_equal(got: Episode, want: Episode) -> None:
    assert got.obs.keys() == want.obs.keys()
    for key in want.obs:
        for name, a, b in (("obs", got.obs, want.obs), ("next_obs", got.next_obs, want.next_obs)):
            assert a[key].dtype == b[key].dtype, (name, key)
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}/{key}")
    for name in ("actions", "rewards", "dones", "states"):
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.fixture
def episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    return [_episode(rng, n) for n in (5, 7, 4)]


@pytest.fixture
def dataset(tmp_path: Path, episodes: list[Episode]) -> Path:
    masks = {"train": [0, 2], "valid": [1]}
    return write_dataset(tmp_path / "sub" / "demos.hdf5", episodes, ENV_ARGS, masks=masks)


def test_from_steps_pairs_each_observation_with_the_next(episodes: list[Episode]) -> None:
    ep = episodes[0]
    np.testing.assert_array_equal(ep.next_obs["object"][:-1], ep.obs["object"][1:])
    assert ep.obs[IMAGE].shape == (5, 8, 8, 3)
    assert ep.dones.dtype == np.int64 and ep.dones.tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match=r"final_observation has keys \['a'\]"):
        Episode.from_steps([{"a": 0, "b": 0}], [[0.0]], [0.0], [1], [[]], {"a": 1})


def test_episode_rejects_mismatched_lengths(episodes: list[Episode]) -> None:
    ep = episodes[0]
    with pytest.raises(ValueError, match=r"obs\['object'\] has shape \(4, 10\)"):
        Episode(
            obs={**ep.obs, "object": ep.obs["object"][:4]},
            next_obs=ep.next_obs,
            actions=ep.actions,
            rewards=ep.rewards,
            dones=ep.dones,
            states=ep.states,
        )
    with pytest.raises(ValueError, match=r"rewards has shape \(6,\), expected \(5,\)"):
        Episode(ep.obs, ep.next_obs, ep.actions, np.zeros(6), ep.dones, ep.states)


def test_round_trip(dataset: Path, episodes: list[Episode]) -> None:
    assert dataset.is_file()
    for got, want in zip(load_episodes(dataset), episodes, strict=True):
        _assert_episodes_equal(got, want)
    with h5py.File(dataset, "r") as f:
        assert f["data"].attrs["total"] == 16
        assert [f[f"data/demo_{i}"].attrs["num_samples"] for i in range(3)] == [5, 7, 4]
        assert f["mask/train"][()].tolist() == [b"demo_0", b"demo_2"]
        image = f[f"data/demo_0/obs/{IMAGE}"]
        assert image.compression == "gzip" and image.chunks == (1, 8, 8, 3)
    assert read_env_args(dataset) == ENV_ARGS
    assert ENV_ARGS["type"] == ROBOPOLICY_ENV_TYPE
    assert list_demos(dataset) == ["demo_0", "demo_1", "demo_2"]
    assert list_demos(dataset, "train") == ["demo_0", "demo_2"]
    valid = load_episodes(dataset, keys=["object"], filter_key="valid")
    assert len(valid) == 1 and list(valid[0].obs) == ["object"]
    np.testing.assert_array_equal(valid[0].obs["object"], episodes[1].obs["object"])
    info = dataset_info(dataset)
    assert info["num_demos"] == 3 and info["total_samples"] == 16 and info["action_dim"] == 7
    assert info["obs"][IMAGE] == {"shape": (8, 8, 3), "dtype": "uint8"}
    assert info["filter_keys"] == ["train", "valid"] and info["env_args"] == ENV_ARGS


@pytest.mark.parametrize("cache_mode", [None, "low_dim"])
def test_loads_in_robomimic_sequence_dataset(
    dataset: Path,
    episodes: list[Episode],
    cache_mode: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import robomimic.utils.obs_utils as obs_utils
    from robomimic.utils.dataset import SequenceDataset

    # robomimic keeps the key -> modality map in module globals; restore them after this test.
    for name in ("OBS_KEYS_TO_MODALITIES", "OBS_MODALITIES_TO_KEYS"):
        monkeypatch.setattr(obs_utils, name, getattr(obs_utils, name))
    obs_utils.initialize_obs_modality_mapping_from_dict({"low_dim": list(LOW_DIM), "rgb": [IMAGE]})
    ds = SequenceDataset(
        hdf5_path=str(dataset),
        obs_keys=(*LOW_DIM, IMAGE),
        dataset_keys=("actions", "rewards", "dones"),
        frame_stack=1,
        seq_length=3,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=False,
        goal_mode=None,
        hdf5_cache_mode=cache_mode,
        hdf5_use_swmr=True,
        hdf5_normalize_obs=False,
        filter_by_attribute=None,
        load_next_obs=True,
    )
    assert len(ds) == 16  # one sequence per sample when padding the sequence end
    item = ds[5 + 1]  # demo_1, step 1
    ep = episodes[1]
    np.testing.assert_allclose(item["actions"], ep.actions[1:4])
    np.testing.assert_allclose(item["rewards"], ep.rewards[1:4])
    np.testing.assert_array_equal(item["obs"][IMAGE], ep.obs[IMAGE][1:4])
    np.testing.assert_array_equal(item["next_obs"]["object"], ep.next_obs["object"][1:4])
    assert item["obs"]["robot0_eef_pos"].shape == (3, 3)
    last = ds[5 + 7 + 3]  # demo_2's last step: the sequence end repeats it
    np.testing.assert_array_equal(last["dones"], [1, 1, 1])
    ds.close_and_delete_hdf5_handle()


def test_exception_in_writer_leaves_existing_file_and_no_temp(
    dataset: Path, episodes: list[Episode]
) -> None:
    before = dataset.read_bytes()
    with (
        pytest.raises(RuntimeError, match="collection crashed"),
        DatasetWriter(dataset, ENV_ARGS) as w,
    ):
        w.add(episodes[0])
        raise RuntimeError("collection crashed")
    with pytest.raises(ValueError, match=r"mask 'train' refers to episodes \[3\]"):
        write_dataset(dataset, episodes, ENV_ARGS, masks={"train": [0, 3]})
    fresh = dataset.with_name("fresh.hdf5")
    with pytest.raises(ValueError, match="obs keys"), DatasetWriter(fresh, ENV_ARGS) as w:
        w.add(episodes[0])
        w.add(
            Episode({}, {}, episodes[1].actions, episodes[1].rewards, episodes[1].dones, [[]] * 7)
        )
    assert dataset.read_bytes() == before
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["demos.hdf5"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.hdf5"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as info:
        load_episodes(path)
    assert isinstance(info.value, DatasetError)


def test_truncated_and_non_hdf5_files(dataset: Path, tmp_path: Path) -> None:
    data = dataset.read_bytes()
    dataset.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{re.escape(str(dataset))}: not a readable HDF5 file"):
        load_episodes(dataset)
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(DatasetError, match=re.escape(str(text))):
        read_env_args(text)


@pytest.mark.parametrize(
    ("edit", "message", "reader"),
    [
        (
            lambda f: f.__delitem__("data/demo_0/actions"),
            "data/demo_0/actions is missing",
            load_episodes,
        ),
        (lambda f: f.__delitem__("data/demo_1/obs"), "data/demo_1/obs is missing", dataset_info),
        (
            lambda f: f["data/demo_0"].attrs.__setitem__("num_samples", 6),
            r"data/demo_0 has num_samples=6, but actions has shape \(5, 7\)",
            load_episodes,
        ),
        (
            lambda f: [f.__delitem__(f"data/demo_2/{g}/object") for g in ("obs", "next_obs")],
            r"data/demo_2/obs has keys \['agentview_image', 'robot0_eef_pos'\], but data/demo_0",
            load_episodes,
        ),
        (
            lambda f: f["data"].attrs.__delitem__("env_args"),
            r"missing attribute data.attrs\['env_args'\]",
            read_env_args,
        ),
        (lambda f: f.move("data", "other"), "missing group 'data'", load_episodes),
    ],
    ids=["no-actions", "no-obs", "num-samples", "obs-keys", "no-env-args", "no-data"],
)
def test_layout_errors_name_file_and_key(
    dataset: Path, edit: Callable[[h5py.File], object], message: str, reader: Callable
) -> None:
    with h5py.File(dataset, "a") as f:
        edit(f)
    with pytest.raises(DatasetError, match=f"{re.escape(str(dataset))}: .*{message}"):
        reader(dataset)


def test_unknown_filter_and_obs_keys(dataset: Path) -> None:
    with pytest.raises(
        DatasetError,
        match=rf"{re.escape(str(dataset))}: unknown filter key 'test'.*\['train', 'valid'\]",
    ):
        list_demos(dataset, "test")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(dataset))}: no obs keys \['depth'\]"):
        load_episodes(dataset, keys=["depth"])


def test_reads_robomimic_convention_file(tmp_path: Path) -> None:
    """robomimic's published datasets: robosuite env type 1, bytes masks, gzip images, and (in
    the raw/low-dim variants) neither next_obs nor states."""
    rng = np.random.default_rng(1)
    path = tmp_path / "low_dim.hdf5"
    lengths = {"demo_1": 3, "demo_2": 4, "demo_10": 2}
    env_args = {
        "env_name": "Lift",
        "type": 1,
        "env_kwargs": {"has_renderer": False, "robots": ["Panda"], "control_freq": 20},
    }
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, n in lengths.items():
            demo = data.create_group(name)
            demo.attrs["num_samples"] = n
            demo.attrs["model_file"] = "<mujoco/>"
            demo.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(n, 3)))
            images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
            demo.create_dataset(f"obs/{IMAGE}", data=images, compression="gzip")
            demo.create_dataset("actions", data=rng.normal(size=(n, 7)))
            demo.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.int64))
        data.attrs["total"] = sum(lengths.values())
        data.attrs["env_args"] = json.dumps(env_args, indent=4)
        f["mask/train"] = np.array(["demo_10", "demo_1"], dtype="S")
        f["mask/valid"] = np.array(["demo_2"], dtype="S")

    assert list_demos(path) == ["demo_1", "demo_2", "demo_10"]
    assert list_demos(path, "train") == ["demo_1", "demo_10"]
    assert read_env_args(path) == env_args
    assert dataset_info(path)["total_samples"] == 9
    episodes = load_episodes(path)
    ep = episodes[1]
    assert ep.num_samples == 4 and ep.states.shape == (4, 0)
    np.testing.assert_array_equal(ep.rewards, np.zeros(4))
    np.testing.assert_array_equal(ep.dones, [0, 0, 0, 1])
    obs = ep.obs[IMAGE]
    np.testing.assert_array_equal(ep.next_obs[IMAGE], np.concatenate([obs[1:], obs[-1:]]))


def test_action_bounds_scan_names_the_worst_value_of_the_demos_in_use(tmp_path, episodes) -> None:
    from robopolicy.data.action_bounds import find_out_of_bounds_actions

    episodes[1].actions[3, 6] = -4.0  # demo_1, in mask "valid" only
    episodes[2].actions[0, 0] = 1.5
    path = write_dataset(tmp_path / "d.hdf5", episodes, ENV_ARGS, masks={"train": [0, 2]})
    low, high = -np.ones(7), np.ones(7)
    bad = find_out_of_bounds_actions(path, low, high)
    assert (bad.count, bad.nonfinite, bad.total) == (2, 0, 16 * 7)
    assert (bad.demo, bad.step, bad.dim, bad.value) == ("demo_1", 3, 6, -4.0)
    assert "data/demo_1/actions[3, 6] = -4, outside [-1, 1]" in bad.describe()
    train = find_out_of_bounds_actions(path, low, high, filter_key="train")
    assert (train.count, train.demo, train.value) == (1, "demo_2", 1.5)
    assert find_out_of_bounds_actions(path, 2 * low, 2 * high, filter_key="train") is None
