"""The robosuite 1.5 adapter (envs/robosuite): robomimic's observations and env_args, seeded
resets, the 1.4 -> 1.5 controller conversion, the experts, and datasets made from env_args.

robosuite envs take seconds to build, so one Lift env serves the module where it can.
"""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest
from bc_fixtures import REPO, tiny_train_config

from envs.robosuite.controllers import ControllerConfigError, part_to_composite, to_composite
from envs.robosuite.loader import RobosuiteMissingError, import_robosuite
from robopolicy.config import ConfigError
from robopolicy.data.hdf5 import (
    DatasetError,
    Episode,
    dataset_info,
    list_demos,
    load_episodes,
    read_env_args,
    write_dataset,
)
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.env_args import make_env_from_dataset
from robopolicy.training.bc import train_bc

# robosuite 1.4's OSC_POSE config, as robomimic 0.3's published Lift/Can/Square files store it.
OLD_OSC_POSE = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "control_delta": True,
    "interpolation": None,
    "ramp_ratio": 0.2,
}
OLD_ENV_ARGS = {  # robomimic 0.3 + robosuite 1.4 layout
    "env_name": "Lift",
    "env_version": "1.4.1",
    "type": 1,
    "env_kwargs": {
        "has_renderer": False,
        "has_offscreen_renderer": True,
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": False,
        "control_freq": 20,
        "controller_configs": OLD_OSC_POSE,
        "robots": ["Panda"],
        "camera_depths": False,
        "camera_heights": 84,
        "camera_widths": 84,
        "reward_shaping": False,
    },
}
ROBOMIMIC_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")


@pytest.fixture(scope="module")
def lift():
    env = gym.make("robosuite/Lift-v0")
    yield env
    env.close()


def test_the_three_tasks_are_registered():
    for env_id in (
        "robosuite/Lift-v0",
        "robosuite/PickPlaceCan-v0",
        "robosuite/NutAssemblySquare-v0",
    ):
        assert env_id in gym.registry


def test_observations_have_robomimics_keys(lift):
    obs, info = lift.reset(seed=0)
    assert set(ROBOMIMIC_KEYS) <= set(obs)
    assert obs["object"].shape == (10,) and obs["robot0_eef_quat"].shape == (4,)
    assert lift.observation_space.contains(obs)
    assert info == {"is_success": False}
    assert lift.action_space.shape == (7,)


def test_passes_gymnasiums_env_checker(lift):
    from gymnasium.utils.env_checker import check_env

    check_env(lift.unwrapped, skip_render_check=True)


def test_camera_images_are_rendered_upright():
    env = gym.make("robosuite/Lift-v0", obs_type="pixels", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert set(obs) == {"agentview_image", "robot0_eye_in_hand_image"}
        assert env.observation_space.contains(obs)
        image = obs["agentview_image"].astype(float)
        # robomimic's agentview: the robot at the top, the bright table below it (robosuite
        # renders bottom row first; unflipped, this is the other way round)
        assert image[-8:].mean() > image[:8].mean() + 20
    finally:
        env.close()


def test_seeded_resets_are_reproducible(lift):
    lift.reset(seed=5)
    first = lift.unwrapped.get_state()
    lift.reset(seed=6)
    other = lift.unwrapped.get_state()
    lift.reset(seed=5)
    assert np.array_equal(lift.unwrapped.get_state(), first)
    assert not np.array_equal(other, first)


def test_sparse_reward_and_truncation_at_the_horizon(lift):
    env = lift.unwrapped
    env.horizon = 3
    try:
        lift.reset(seed=0)
        results = [lift.step(np.zeros(7, np.float32)) for _ in range(3)]
    finally:
        env.horizon = 400
    assert [r[1] for r in results] == [0.0, 0.0, 0.0]  # sparse: nothing until success
    assert [r[3] for r in results] == [False, False, True]  # truncated at the horizon
    assert all(r[4] == {"is_success": False} for r in results)


def test_state_round_trip(lift):
    lift.reset(seed=1)
    state = lift.unwrapped.get_state()
    for _ in range(3):
        lift.step(lift.action_space.sample())
    lift.unwrapped.set_state(state)
    assert np.array_equal(lift.unwrapped.get_state(), state)
    with pytest.raises(ValueError, match="state shape"):
        lift.unwrapped.set_state(state[:-1])


def test_bad_actions_are_refused(lift):
    lift.reset(seed=0)
    with pytest.raises(ValueError, match="action shape"):
        lift.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        lift.step(np.full(7, np.nan))


def test_env_args_are_robomimics_and_rebuild_the_env(lift):
    env_args = lift.unwrapped.robomimic_env_args()
    assert env_args["env_name"] == "Lift" and env_args["type"] == 1
    assert env_args["env_version"].startswith("1.5")
    kwargs = json.loads(json.dumps(env_args["env_kwargs"]))  # robomimic stores JSON
    assert kwargs["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"
    assert kwargs["robots"] == ["Panda"] and kwargs["control_freq"] == 20


def test_lift_expert_succeeds(lift):
    lift.unwrapped.attach_expert(0.0)
    try:
        for seed in (0, 1):
            lift.reset(seed=seed)
            for _ in range(100):
                _, _, terminated, truncated, info = lift.step(lift.unwrapped.expert_action())
                if terminated or truncated:
                    break
            assert info["is_success"], f"seed {seed}"
    finally:
        lift.unwrapped._expert_noise = None


def test_an_env_without_an_expert_says_so(lift, monkeypatch):
    monkeypatch.setattr(lift.unwrapped, "expert_class", "")  # as for robosuite's other envs
    with pytest.raises(ValueError, match="has no scripted expert"):
        lift.unwrapped.attach_expert(0.0)


# ---- controller configs: robosuite 1.4 -> 1.5 ----------------------------------------------
def test_a_14_part_config_becomes_a_15_composite_config():
    composite = part_to_composite(OLD_OSC_POSE)
    assert composite["type"] == "BASIC"
    arm = composite["body_parts"]["right"]
    assert arm["type"] == "OSC_POSE" and arm["gripper"] == {"type": "GRIP"}
    # renamed keys keep their values; the old names (which 1.5 would ignore) are gone
    assert arm["damping_ratio"] == 1 and arm["damping_ratio_limits"] == [0, 10]
    assert arm["input_type"] == "delta"
    assert not {"damping", "damping_limits", "control_delta"} & set(arm)
    assert OLD_OSC_POSE["damping"] == 1  # the input is not modified


def test_unknown_controllers_are_named():
    parts, composites = ["OSC_POSE"], ["BASIC"]
    with pytest.raises(ControllerConfigError, match="'OSC_FANCY'"):
        to_composite({**OLD_OSC_POSE, "type": "OSC_FANCY"}, composites, parts)
    with pytest.raises(ControllerConfigError, match="'MYSTERY'"):
        to_composite({"type": "MYSTERY", "body_parts": {}}, composites, parts)


def test_a_missing_robosuite_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)  # import fails as if not installed
    with pytest.raises(RobosuiteMissingError, match="pip install robosuite==1.5.2"):
        import_robosuite()


# ---- envs from a dataset's env_args --------------------------------------------------------
def _dataset(path, env_args, obs_keys=ROBOMIMIC_KEYS):
    sizes = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
    obs = {k: np.zeros((2, sizes.get(k, 3))) for k in obs_keys}
    episode = Episode(obs, obs, np.zeros((2, 7)), np.zeros(2), np.array([0, 1]), np.zeros((2, 3)))
    write_dataset(path, [episode], env_args)
    return path


def test_a_robosuite_14_dataset_makes_the_env(tmp_path):
    path = _dataset(tmp_path / "lift14.hdf5", OLD_ENV_ARGS)
    env = make_env_from_dataset(path)
    try:
        assert env.spec.id == "robosuite/Lift-v0"
        arm = env.unwrapped.make_kwargs["controller_configs"]["body_parts"]["right"]
        assert arm["type"] == "OSC_POSE" and arm["kp"] == 150 and arm["damping_ratio"] == 1
        with h5py.File(path) as f:  # written as robomimic lays it out
            assert json.loads(f["data"].attrs["env_args"])["type"] == 1
    finally:
        env.close()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"env_name": "LiftTheMoon"}, "'LiftTheMoon'"),
        ({"type": 7}, r"\['type'\] is 7"),
        (
            {"env_kwargs": {**OLD_ENV_ARGS["env_kwargs"], "controller_configs": {"type": "OSC_X"}}},
            "'OSC_X'",
        ),
    ],
)
def test_bad_env_args_name_the_file_and_the_key(tmp_path, change, named):
    path = _dataset(tmp_path / "bad.hdf5", {**OLD_ENV_ARGS, **change})
    with pytest.raises(DatasetError, match=named) as err:
        make_env_from_dataset(path)
    assert str(path) in str(err.value)


def test_observation_keys_the_env_lacks_are_named(tmp_path):
    keys = (*ROBOMIMIC_KEYS, "robot0_eef_vel_lin")  # robosuite 1.5 dropped it
    path = _dataset(tmp_path / "vel.hdf5", OLD_ENV_ARGS, keys)
    with pytest.raises(DatasetError, match="robot0_eef_vel_lin") as err:
        make_env_from_dataset(path)
    assert str(path) in str(err.value)


# ---- collection in robomimic's layout --------------------------------------------------------
@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> str:
    """Four expert demos of robosuite's Lift, collected the way `robopolicy collect` does."""
    output = tmp_path_factory.mktemp("robosuite") / "lift.hdf5"
    cfg = CollectConfig(env_id="robosuite/Lift-v0", n_demos=4, num_envs=1, output=str(output))
    assert collect(cfg, progress=False)["demos"] == 4
    return str(output)


def test_collected_files_have_robomimics_env_args_and_masks(collected):
    env_args = read_env_args(collected)
    assert env_args["env_name"] == "Lift" and env_args["type"] == 1
    assert "controller_configs" in env_args["env_kwargs"]
    info = dataset_info(collected)
    assert {"train", "valid", "20_percent"} <= set(info["filter_keys"])
    assert sorted(list_demos(collected, "train") + list_demos(collected, "valid")) == list_demos(
        collected
    )


def test_collected_states_replay_the_observations(collected, lift):
    """Each stored state is the one before its action. robosuite's step reads positions as of
    its last physics substep's start (2 ms stale), so a moving gripper differs by well under a
    millimetre from the replayed state; a state off by one control step would be ~1 cm away."""
    episode = load_episodes(collected, ["object", "robot0_eef_pos"], "train")[0]
    for t in (0, len(episode.actions) // 2, len(episode.actions) - 1):
        lift.unwrapped.set_state(episode.states[t])
        obs = lift.unwrapped.observation()
        np.testing.assert_allclose(obs["object"], episode.obs["object"][t], atol=1e-3)
        np.testing.assert_allclose(
            obs["robot0_eef_pos"], episode.obs["robot0_eef_pos"][t], atol=1e-3
        )


def test_collected_files_load_in_robomimics_sequence_dataset(collected, monkeypatch):
    import robomimic.utils.obs_utils as obs_utils
    from robomimic.utils.dataset import SequenceDataset

    output = collected
    for name in ("OBS_KEYS_TO_MODALITIES", "OBS_MODALITIES_TO_KEYS"):
        monkeypatch.setattr(obs_utils, name, getattr(obs_utils, name))
    obs_utils.initialize_obs_modality_mapping_from_dict({"low_dim": list(ROBOMIMIC_KEYS)})
    ds = SequenceDataset(
        hdf5_path=str(output),
        obs_keys=ROBOMIMIC_KEYS,
        dataset_keys=("actions", "rewards", "dones"),
        frame_stack=1,
        seq_length=4,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=False,
        goal_mode=None,
        hdf5_cache_mode=None,
        hdf5_use_swmr=True,
        hdf5_normalize_obs=False,
        filter_by_attribute="train",
        load_next_obs=True,
    )
    assert ds.demos == list_demos(output, "train")
    item = ds[0]
    assert item["actions"].shape == (4, 7) and item["obs"]["object"].shape == (4, 10)


def _train_config(dataset: str, run_dir, *extra: str):
    return tiny_train_config(
        dataset,
        run_dir,
        "task.env_id=robosuite/Lift-v0",
        f"task.obs_keys=[{','.join(ROBOMIMIC_KEYS)}]",
        "optim.steps=2",
        "loop.save_every=2",
        *extra,
    )


def test_train_reads_only_the_filter_keys_demos(collected, tmp_path, monkeypatch):
    import robopolicy.training.bc as bc

    seen = {}
    from_hdf5 = bc.SequenceWindows.from_hdf5

    def spy(path, obs_keys, **kwargs):
        seen["filter_key"] = kwargs.get("filter_key")
        windows = from_hdf5(path, obs_keys, **kwargs)
        seen["samples"] = len(windows)
        return windows

    monkeypatch.setattr(bc.SequenceWindows, "from_hdf5", spy)
    train_bc(_train_config(collected, tmp_path / "run", "task.filter_key=valid"))
    assert seen["filter_key"] == "valid" and len(list_demos(collected, "valid")) == 1
    valid_windows = seen["samples"]
    train_bc(_train_config(collected, tmp_path / "run2"))
    assert seen["filter_key"] is None and seen["samples"] > valid_windows
    with pytest.raises(DatasetError, match="unknown filter key 'nope'"):
        train_bc(_train_config(collected, tmp_path / "run3", "task.filter_key=nope"))


def test_train_names_the_dataset_when_robosuite_is_missing(collected, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)  # import fails as if not installed
    with pytest.raises(DatasetError, match=r"env_args.*robosuite==1\.5\.2") as err:
        train_bc(_train_config(collected, tmp_path / "run"))
    assert collected in str(err.value)


def test_masks_split_every_demo_into_train_and_valid_and_draw_subsets():
    from robopolicy.data.masks import robomimic_masks

    masks = robomimic_masks(50, seed=0)
    assert sorted(masks["train"] + masks["valid"]) == list(range(50))
    assert len(masks["valid"]) == 5 and len(masks["20_percent"]) == 10
    assert sorted(masks["20_percent_train"] + masks["20_percent_valid"]) == masks["20_percent"]
    assert robomimic_masks(50, seed=0) == masks  # the same collection, the same split
    assert robomimic_masks(1)["valid"] == [] and robomimic_masks(1)["20_percent"] == [0]


@pytest.mark.parametrize("env_id", ["robosuite/PickPlaceCan-v0", "robosuite/NutAssemblySquare-v0"])
def test_can_and_square_experts_succeed(env_id):
    env = gym.make(env_id)
    env.unwrapped.attach_expert(0.0)
    try:
        env.reset(seed=0)
        for _ in range(400):
            _, _, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            if terminated or truncated:
                break
        assert info["is_success"]
    finally:
        env.close()


def test_train_makes_the_env_from_the_dataset(collected, tmp_path):
    from omegaconf import OmegaConf

    cfg = _train_config(
        collected, tmp_path / "run", "task.env_id=''", f"task.env_from_dataset={collected}"
    )
    result = train_bc(cfg)
    saved = OmegaConf.load(next((tmp_path / "run").rglob("config.yaml")))
    assert saved.task.env_id == "robosuite/Lift-v0"  # resolved, so eval and export need no file
    controller = saved.task.env_kwargs.env_kwargs.controller_configs
    assert controller.body_parts.right.type == "OSC_POSE"
    assert saved.task.env_kwargs.obs_type == "state"  # task.env_kwargs win over the dataset's
    assert result is not None
    with pytest.raises(ConfigError, match="recorded on robosuite/Lift-v0"):
        train_bc(
            _train_config(
                collected,
                tmp_path / "run2",
                "task.env_id=robosuite/PickPlaceCan-v0",
                f"task.env_from_dataset={collected}",
            )
        )
    with pytest.raises(ConfigError, match="task.env_id is not set"):
        train_bc(_train_config(collected, tmp_path / "run3", "task.env_id=''"))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"env_name": "LiftTheMoon"}, "'LiftTheMoon'"),
        (
            {"env_kwargs": {**OLD_ENV_ARGS["env_kwargs"], "controller_configs": {"type": "OSC_X"}}},
            "'OSC_X'",
        ),
    ],
)
def test_cli_train_refuses_a_dataset_robosuite_cannot_run(tmp_path, capsys, change, named):
    from robopolicy.cli import main

    path = _dataset(tmp_path / "bad.hdf5", {**OLD_ENV_ARGS, **change})
    argv = ["train", str(REPO / "configs/train/lift_diffusion.yaml"), f"task.dataset={path}"]
    argv += ["task.env_id=''"]
    argv += [f"task.env_from_dataset={path}", f"run_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robopolicy train: error: ") and str(path) in err
    assert "env_args" in err and named in err
    assert not list((tmp_path / "run").rglob("*.safetensors"))  # refused before training


def test_train_names_an_observation_key_the_env_does_not_produce(tmp_path):
    keys = (*ROBOMIMIC_KEYS, "robot0_eef_vel_lin")  # in robomimic's files; robosuite 1.5 lacks it
    path = str(_dataset(tmp_path / "vel.hdf5", OLD_ENV_ARGS, keys))
    cfg = _train_config(path, tmp_path / "run", f"task.obs_keys=[{','.join(keys)}]")
    with pytest.raises(ConfigError, match="'robot0_eef_vel_lin' is not an observation") as err:
        train_bc(cfg)
    assert path in str(err.value)


def test_registration_is_cheap_and_robosuite_imports_quietly():
    import subprocess

    code = (
        "import sys, robopolicy, gymnasium as gym\n"
        "assert 'robosuite' not in sys.modules, 'registering imported robosuite'\n"
        "gym.make('robosuite/Lift-v0').close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "robosuite" not in done.stderr + done.stdout  # no macro/robosuite_models/mink warnings
