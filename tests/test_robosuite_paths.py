"""Every command on a robosuite task, on a tiny budget, through the same calls as the own tasks:
collect -> train (state and images) -> eval (video, each execution mode) -> rti-tune ->
finetune (residual RL, DSRL-SAC, DSRL-NA) -> eval and serve of the finetuned policy -> export
-> serve, and ``robopolicy bench robosuite``. Episodes are cut to a short horizon (an env
kwarg the checkpoint keeps), so every path runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bc_fixtures import REPO, TINY_TRAIN_OVERRIDES

from robopolicy.bench import robosuite as bench_robosuite
from robopolicy.checkpoint import read_config
from robopolicy.cli import main
from robopolicy.config import ConfigError, load_config
from robopolicy.data.hdf5 import read_env_args
from robopolicy.deploy.client import PolicyClient
from robopolicy.deploy.server import PolicyServer, ServeConfig
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig

HORIZON = 24  # steps per episode in these tests (robomimic's horizon is 400)
TINY_MLP = ["policy.mlp_hidden_dim=32", "policy.mlp_num_layers=2"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    """Three expert demos of robosuite's Lift, state and both cameras at 32x32."""
    output = tmp_path_factory.mktemp("robosuite_paths") / "lift.hdf5"
    cfg = CollectConfig(
        env_id="robosuite/Lift-v0",
        n_demos=3,
        num_envs=1,
        output=str(output),
        env_kwargs={"obs_type": "both", "image_size": 32},
    )
    assert collect(cfg, progress=False)["demos"] == 3
    return str(output)


def _train_config(demos: str, run_dir: Path, *extra: str) -> TrainConfig:
    overrides = [
        f"task.dataset={demos}",
        f"task.env_from_dataset={demos}",
        f"run_dir={run_dir}",
        f"task.env_kwargs.horizon={HORIZON}",
        *TINY_TRAIN_OVERRIDES,
        *TINY_MLP,
        "optim.steps=10",
        "loop.save_every=10",
        *extra,
    ]
    path = REPO / "configs/train/robosuite_lift_diffusion_mlp.yaml"
    return load_config(path, TrainConfig, overrides)


@pytest.fixture(scope="module")
def state_run(demos, tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("robosuite_state_run")
    return train_bc(_train_config(demos, run_dir, "task.env_kwargs.obs_type=state"))["checkpoint"]


def test_a_state_policy_evaluates_with_video_in_every_execution_mode(state_run, tmp_path):
    saved = read_config(state_run)["task"]
    assert saved["env_id"] == "robosuite/Lift-v0" and saved["env_kwargs"]["horizon"] == HORIZON
    out = tmp_path / "eval"
    args = ["eval", state_run, "n_episodes=1", "video_episodes=1", f"out_dir={out}"]
    assert main(args) == 0
    summary = json.loads(next(out.rglob("eval.json")).read_text())
    assert summary["env_id"] == "robosuite/Lift-v0" and summary["mean_episode_length"] == HORIZON
    assert list(out.rglob("*.mp4"))
    modes = [
        ["execution.mode=ensemble"],
        ["execution.mode=rti", "execution.sampler=ddpm", "execution.rti_start_step=2"],
    ]
    for i, mode in enumerate(modes):
        where = f"out_dir={tmp_path / str(i)}"
        args = ["eval", state_run, "n_episodes=1", "video_episodes=0", where, *mode]
        assert main(args) == 0


def test_rti_tune_runs_on_a_robosuite_policy(state_run, tmp_path):
    out = tmp_path / "rti-tune.json"
    args = ["rti-tune", state_run, "n_episodes=1", "num_envs=1", "candidates=[1,2]", f"out={out}"]
    assert main(args) == 0
    assert json.loads(out.read_text())


def test_an_image_policy_trains_and_evaluates(demos, tmp_path):
    cfg = _train_config(
        demos,
        tmp_path / "pixels",
        "task.env_kwargs.obs_type=both",
        "task.env_kwargs.image_size=32",
        "task.obs_keys=[agentview_image,robot0_eye_in_hand_image,robot0_eef_pos]",
        "policy.image_encoder=conv",
        "policy.crop_size=28",
        "optim.steps=4",
        "optim.batch_size=4",
        "loop.save_every=4",
        "loop.final_eval_episodes=1",
        "loop.video_episodes=0",
    )
    result = train_bc(cfg)
    assert result["eval"]["n_episodes"] == 1
    assert result["eval"]["mean_episode_length"] == HORIZON


RL_AGENT = [
    "warmup_steps=16",
    "critic_warmup_updates=4",
    "num_threads=1",
    "agent.hidden_dim=16",
    "agent.batch_size=8",
]
RL_TINY = ["env_steps=48", "eval_every=0", "final_eval_episodes=1", *RL_AGENT]


@pytest.mark.parametrize("method", ["residual", "dsrl_sac", "dsrl_na"])
def test_each_rl_method_finetunes_evaluates_and_serves(state_run, tmp_path, method):
    config = REPO / f"configs/rl/{method}_can.yaml"
    overrides = [f"base={state_run}", f"run_dir={tmp_path / method}", *RL_TINY]
    result = finetune(load_config(config, FinetuneConfig, overrides))
    assert result["env_steps"] >= 48
    assert result["final"]["env_id"] == "robosuite/Lift-v0"
    out = tmp_path / "eval"
    assert (
        main(["eval", result["checkpoint"], "n_episodes=1", "video_episodes=0", f"out_dir={out}"])
        == 0
    )
    _one_served_action(result["checkpoint"])


def _one_served_action(checkpoint: str) -> None:
    server = PolicyServer(ServeConfig(checkpoint=checkpoint, port=0))
    url = f"ws://127.0.0.1:{server.start_background()}"
    with PolicyClient(url) as client:
        obs = {
            key: np.zeros(spec["shape"], dtype=np.float32)
            for key, spec in client.metadata["observations"].items()
        }
        action = client.act(obs)
    assert action.shape == (7,) and np.isfinite(action).all()


def test_export_then_serve(state_run, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", state_run, str(out)]) == 0
    _one_served_action(str(out))


def test_bench_robosuite_runs_every_section(demos, state_run, tmp_path):
    train_overrides = [
        f"task.dataset={demos}",
        f"task.env_from_dataset={demos}",
        f"task.env_kwargs.horizon={HORIZON}",
        "task.env_kwargs.obs_type=state",
        *TINY_TRAIN_OVERRIDES,
        *TINY_MLP,
        "policy.num_train_timesteps=100",  # the RTI schemes run the 100-step chain
        "policy.pred_horizon=16",  # and ddim10_chunked8 executes 8 actions of each
        "optim.steps=4",
        "loop.save_every=4",
    ]
    bc_run = {
        "name": "lift_diffusion",
        "train_config": "train/robosuite_lift_diffusion_mlp.yaml",
        "collect_config": "collect/robosuite_lift.yaml",
        "overrides": train_overrides,
    }
    cfg = load_config(
        REPO / "configs/bench/robosuite.yaml",
        bench_robosuite.Config,
        [
            f"out_root={tmp_path}",
            f"bc.runs=[{json.dumps(bc_run)}]",
            "bc.eval_episodes=1",
            "bc.latency_repeats=1",
            "bc.speed_steps=1",
            "rti.tasks=[{name: lift_diffusion}]",
            "rti.eval_episodes=1",
            "rti.num_envs=1",
            f"rl.tasks=[{{name: lift, base: {state_run}, base_train_config: none, "
            "collect_config: none, methods: {residual: rl/residual_can.yaml}}]",
            "rl.seeds=[0]",
            "rl.env_steps=32",
            "rl.eval_every=0",
            "rl.eval_episodes=1",
            "rl.final_eval_episodes=1",
            f"rl.overrides=[{','.join(RL_AGENT)}]",
            "throughput.envs=[Lift]",
            "throughput.rounds=2",
            "throughput.steps=3",
            "throughput.eval_episodes=1",
            "throughput.eval_run=lift_diffusion",
            "published.bc.lift_diffusion={figure: '1.00', source: 'a paper, Table 1'}",
        ],
    )
    results = bench_robosuite.run(cfg)
    sections = results["sections"]
    assert set(sections) == {"bc", "rti", "rl", "throughput"}
    assert (
        sections["rti"]["tasks"]["lift_diffusion"]["checkpoint"]
        == (sections["bc"]["runs"]["lift_diffusion"]["checkpoint"])
    )
    assert sections["throughput"]["step_overhead"]["Lift"]["ratio"] > 0
    assert sections["throughput"]["eval"]["by_num_envs"]["2"]["episodes_per_min"] > 0
    out = next(tmp_path.glob("robosuite/*"))
    report = (out / "report.md").read_text()
    assert "| lift_diffusion |" in report and "a paper, Table 1" in report
    with pytest.raises(ConfigError, match="sections"):
        bench_robosuite.run(load_config(None, bench_robosuite.Config, ["sections=[bogus]"]))
    # resume adds a section and keeps the others
    cfg.sections, cfg.resume = ["throughput"], str(out)
    again = bench_robosuite.run(cfg)
    assert set(again["sections"]) == {"bc", "rti", "rl", "throughput"}


def test_eval_and_collect_make_the_env_from_a_dataset(demos, state_run, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", state_run, f"env_from_dataset={demos}", "n_episodes=1", "video_episodes=0"]
    env = f"env_kwargs={{obs_type: state, horizon: {HORIZON}}}"
    assert main([*args, env, f"out_dir={out}"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["env_id"] == "robosuite/Lift-v0" and summary["mean_episode_length"] == HORIZON
    other = [*args, "env_id=robosuite/PickPlaceCan-v0", f"out_dir={tmp_path / 'x'}"]
    assert main(other) == 2
    assert "recorded on robosuite/Lift-v0" in capsys.readouterr().err

    more = tmp_path / "more.hdf5"
    cfg = CollectConfig(env_from_dataset=demos, n_demos=1, num_envs=1, output=str(more))
    assert collect(cfg, progress=False)["env_id"] == "robosuite/Lift-v0"
    assert read_env_args(str(more))["env_name"] == read_env_args(demos)["env_name"] == "Lift"
    with pytest.raises(ConfigError, match="env_from_dataset"):
        collect(CollectConfig(n_demos=1, output=str(tmp_path / "none.hdf5")), progress=False)
