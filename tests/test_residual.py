"""Residual RL end to end on a tiny Lift policy: the wrapper, demo relabelling, finetune, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robopolicy.bench.resume_exactness import rl_resume_exactness
from robopolicy.checkpoint import load_policy, read_config
from robopolicy.cli import main
from robopolicy.config import ConfigError, load_config
from robopolicy.data.hdf5 import load_episodes
from robopolicy.deploy.client import PolicyClient, ServerError
from robopolicy.deploy.server import PolicyServer, ServeConfig
from robopolicy.inference.chunking import ChunkExecutor
from robopolicy.inference.execution import ExecutionConfig
from robopolicy.inference.guard import ObsGuardConfig
from robopolicy.resume import load_run_config
from robopolicy.rl.actors import load_rl_agent
from robopolicy.rl.config import RESUMABLE, FinetuneConfig
from robopolicy.rl.finetune import RLDivergedError, finetune
from robopolicy.rl.networks import DeterministicActor
from robopolicy.rl.residual import ResidualBase, demo_buffer

GRIPPER = (3,)


def _finetune_config(tiny_run, tmp_path, *extra: str) -> FinetuneConfig:
    overrides = [
        f"base={tiny_run}",
        f"run_dir={tmp_path / 'rl'}",
        "env_steps=40",
        "warmup_steps=10",
        "critic_warmup_updates=5",
        "eval_every=20",
        "eval_episodes=2",
        "final_eval_episodes=2",
        "save_every=20",
        "log_every=10",
        "num_threads=1",
        "agent.hidden_dim=16",
        "agent.critic_heads=3",
        "agent.batch_size=8",
        *extra,
    ]
    return load_config(None, FinetuneConfig, overrides)


def test_zero_init_residual_reproduces_the_base_exactly(tiny_run) -> None:
    policy = load_policy(tiny_run)
    base = ResidualBase(policy, num_envs=2, discrete_dims=GRIPPER)
    actor = DeterministicActor(base.obs_dim, base.action_dim, 16, 2, scale=0.2, zero_init=True)
    reference = ChunkExecutor(policy, 2, GRIPPER)
    rng = np.random.default_rng(0)
    for step in range(10):  # crosses chunk boundaries
        obs = {
            k: rng.normal(size=(2, *shape)).astype(np.float32)
            for k, shape in policy.shapes.obs.items()
        }
        torch.manual_seed(step)
        actor_obs = base.step(obs)
        executed = base.executed_action(actor_obs, actor(actor_obs))
        torch.manual_seed(step)
        expected = reference.act({k: torch.as_tensor(v) for k, v in obs.items()})
        assert torch.equal(executed, base.base_action(actor_obs))  # adds exactly nothing
        # and the base acts as the policy's own chunked execution (batching aside)
        assert torch.allclose(executed, expected, atol=1e-5)


def test_without_a_gain_even_a_full_residual_keeps_the_base_gripper(tiny_run) -> None:
    """At action_scale 1 a residual of -+1 would sum a +-1 command to 0; the gripper must
    still be the base's, while the arm dims move by the residual (clipped)."""
    policy = load_policy(tiny_run)
    base = ResidualBase(policy, num_envs=1, discrete_dims=GRIPPER)
    obs = {k: np.zeros((1, *shape), np.float32) for k, shape in policy.shapes.obs.items()}
    actor_obs = base.step(obs)
    base_action = base.base_action(actor_obs)
    residual = -torch.sign(base_action)  # pushes every dim across zero
    executed = base.executed_action(actor_obs, residual)
    assert torch.equal(executed[:, GRIPPER], base_action[:, GRIPPER])
    arm = [i for i in range(policy.action_dim) if i not in GRIPPER]
    assert torch.allclose(executed[:, arm], (base_action + residual)[:, arm].clamp(-1, 1))


def test_residual_sac_trains_and_evaluates_its_mean_action(tiny_run, tmp_path, capsys) -> None:
    result = finetune(_finetune_config(tiny_run, tmp_path, "agent.algo=sac"))
    assert [r["env_steps"] for r in result["history"]] == [0, 20, 40]
    checkpoint = tmp_path / "rl" / "checkpoints" / "0000040"
    assert main(["eval", str(checkpoint), "n_episodes=1", "video_episodes=0"]) == 0
    assert "residual(sac)" in capsys.readouterr().out


def test_gripper_gain_lets_the_residual_flip_open_close(tiny_run) -> None:
    """Without a gain no residual changes the base's +-1 gripper command; with one, the critic
    sees a continuous gripper value and a residual past scale / gain flips what the env gets."""
    policy = load_policy(tiny_run)
    obs = {k: np.zeros((1, *s), np.float32) for k, s in policy.shapes.obs.items()}
    scale, dim = 0.2, GRIPPER[0]
    kept = ResidualBase(policy, 1, GRIPPER)
    gained = ResidualBase(policy, 1, GRIPPER, gripper_gain=1.25, action_scale=scale)
    actor_obs = kept.step(obs)
    gained.step(obs)
    base_grip = float(kept.base_action(actor_obs)[0, dim])
    assert base_grip in (-1.0, 1.0)
    for fraction, flips in ((0.0, False), (0.5, False), (1.0, True)):
        residual = torch.zeros(1, policy.action_dim)
        residual[0, dim] = -base_grip * fraction * scale  # push toward the other command
        unchanged = kept.env_action(kept.executed_action(actor_obs, residual))
        assert unchanged[0, dim] == base_grip
        critic = gained.executed_action(actor_obs, residual)
        assert critic[0, dim] == pytest.approx(base_grip * (1 - 1.25 * fraction))
        assert gained.env_action(critic)[0, dim] == (-base_grip if flips else base_grip)
    # TD3's target smoothing is scaled back on the amplified dim only.
    assert kept.target_noise_weights() is None
    weights = gained.target_noise_weights()
    assert weights[dim] == pytest.approx(scale / 1.25) and weights.sum() == pytest.approx(
        policy.action_dim - 1 + scale / 1.25
    )


class _PreferredGripperCritic(torch.nn.Module):
    """Two heads whose mean Q peaks where the gripper command equals sign(obs[0])."""

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        wanted = torch.where(obs[:, 0] > 0, 1.0, -1.0)
        q = -((actions[:, GRIPPER[0]] - wanted) ** 2) + actions[:, 0]
        return torch.stack([q, q + 0.1])


def test_gripper_critic_chooses_open_close_and_leaves_the_arm_to_the_actor(tiny_run) -> None:
    policy = load_policy(tiny_run)
    base = ResidualBase(policy, 2, GRIPPER, gripper_critic=_PreferredGripperCritic())
    actor_obs = torch.zeros(2, base.obs_dim)
    actor_obs[:, 0] = torch.tensor([1.0, -1.0])  # row 0 wants closed, row 1 open
    actor_obs[:, -policy.action_dim + GRIPPER[0]] = torch.tensor([-1.0, 1.0])  # base: opposite
    residual = torch.full((2, policy.action_dim), 0.1, requires_grad=True)
    executed = base.executed_action(actor_obs, residual)
    assert executed[:, GRIPPER[0]].tolist() == [1.0, -1.0]  # the critic's, not the base's
    assert torch.allclose(executed[:, :3], torch.full((2, 3), 0.1))  # arm: a_base + r
    executed.sum().backward()
    assert torch.equal(residual.grad[:, :3], torch.ones(2, 3))  # the actor still learns the arm
    assert torch.equal(residual.grad[:, GRIPPER[0]], torch.zeros(2))
    with pytest.raises(ValueError, match="both claim the gripper"):
        ResidualBase(policy, 1, GRIPPER, 2.0, 0.2, _PreferredGripperCritic())


def test_base_queue_resets_per_episode(tiny_run) -> None:
    base = ResidualBase(load_policy(tiny_run), num_envs=2, discrete_dims=GRIPPER)
    obs = {k: np.zeros((2, *s), np.float32) for k, s in base.policy.shapes.obs.items()}
    base.step(obs)
    assert all(len(e.queues[0]) > 0 for e in base.executors)
    base.reset(np.array([True, False]))
    assert len(base.executors[0].queues[0]) == 0 and len(base.executors[1].queues[0]) > 0


def test_demo_buffer_relabels_base_actions_and_keeps_demo_actions(tiny_run, lift_demos) -> None:
    policy = load_policy(tiny_run)
    episodes = load_episodes(lift_demos, keys=list(policy.shapes.obs))
    buffer = demo_buffer(policy, episodes, GRIPPER)
    assert len(buffer) == sum(len(e.actions) for e in episodes)
    first = episodes[0]
    n = len(first.actions)
    stored = buffer.actions[:n, 0]
    assert torch.allclose(stored, torch.as_tensor(first.actions, dtype=torch.float32))
    base_actions = buffer.obs[:n, 0, -policy.action_dim :]
    assert set(base_actions[:, 3].tolist()) <= {-1.0, 1.0}  # thresholded gripper commands
    assert not torch.allclose(base_actions, stored)  # the base's, not the demonstrator's
    assert bool(buffer.terminated[n - 1, 0]) == bool(first.dones[-1])
    # consecutive transitions chain: s'_t == s_{t+1}
    assert torch.equal(buffer.next_obs[: n - 1, 0], buffer.obs[1:n, 0])
    # a reward offset (DSRL's -1) shifts the demos' rewards as it shifts the online ones
    shifted = demo_buffer(policy, episodes[:1], GRIPPER, reward_offset=-1.0)
    assert torch.equal(shifted.rewards[:n, 0], buffer.rewards[:n, 0] - 1.0)


def test_finetune_runs_checkpoints_evaluates_and_resumes(tiny_run, tmp_path, capsys) -> None:
    result = finetune(_finetune_config(tiny_run, tmp_path))
    run_dir = tmp_path / "rl"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/success_rate" in r for r in rows)
    assert any("train/critic_loss" in r for r in rows)
    assert (run_dir / "success.png").is_file()
    assert [r["env_steps"] for r in result["history"]] == [0, 20, 40]
    checkpoint = run_dir / "checkpoints" / "0000040"
    assert (checkpoint / "training_state" / "replay.safetensors").is_file()
    # robopolicy eval loads the residual with its base
    assert main(["eval", str(checkpoint), "n_episodes=2", "video_episodes=0"]) == 0
    assert "residual(td3)" in capsys.readouterr().out
    _served_residual_acts_like_the_local_one(str(checkpoint))
    _served_residual_never_sends_non_finite_actions(str(checkpoint))
    # the eval wrote next to the run's own final eval, not over it
    assert (run_dir / "eval-0000040" / "eval.json").is_file()
    assert (run_dir / "eval-0000040-residual-td3" / "eval.json").is_file()
    # going on from the step-20 checkpoint in the run would overwrite step 40: refused
    older = run_dir / "checkpoints" / "0000020"
    with pytest.raises(FileExistsError, match="0000040.*run_dir="):
        finetune(_resumed([f"resume={older}"]))
    # a resume keeps the run's settings: only the budget and the cadences may change
    with pytest.raises(ConfigError, match="agent.batch_size cannot change on a resume"):
        _resumed([f"resume={older}", "agent.batch_size=16"])
    assert _resumed([f"resume={older}", "env_steps=80", "agent.batch_size=8"]).env_steps == 80
    # a branch from it continues the counters and reaches the same end
    branch = tmp_path / "branch"
    resumed = finetune(_resumed([f"resume={older}", f"run_dir={branch}"]))
    assert resumed["env_steps"] == 40
    assert resumed["start_env_steps"] == 20 and result["start_env_steps"] == 0
    # the whole run's evals and clock, not only the resumed part's
    assert [r["env_steps"] for r in resumed["history"]] == [0, 20, 40]
    assert resumed["history"][0] == result["history"][0]
    assert resumed["minutes"] > resumed["session_minutes"] > 0
    _resuming_a_finished_run_reads_it_back(branch, resumed)
    _resume_keeps_the_device_unless_told(checkpoint)


def _resumed(overrides: list[str]) -> FinetuneConfig:
    """A resume's config as ``robopolicy finetune`` builds it: the run's, with the overrides."""
    return load_run_config(None, FinetuneConfig, overrides, RESUMABLE, "finetune")


def _resuming_a_finished_run_reads_it_back(run_dir, finished) -> None:
    """Resuming a run that ran its budget does no work: it returns the recorded result."""
    log = (run_dir / "metrics.jsonl").read_text()
    again = finetune(_resumed([f"resume={run_dir}"]))
    assert (run_dir / "metrics.jsonl").read_text() == log  # nothing evaluated or trained
    assert again["final"]["success_rate"] == finished["final"]["success_rate"]
    assert again["history"] == finished["history"]
    assert again["minutes"] == pytest.approx(finished["minutes"])
    assert again["session_minutes"] == 0 and again["env_steps"] == 40


def test_a_run_resumed_from_a_checkpoint_without_a_clock_has_no_total(
    tiny_run, tmp_path, capsys
) -> None:
    """Checkpoints saved before runs kept their clock resume; the total time is unknown (None,
    not the resumed part's minutes passed off as the run's) and the summary says so."""
    finetune(_finetune_config(tiny_run, tmp_path, "eval_every=0"))
    state_file = tmp_path / "rl" / "checkpoints" / "0000020" / "training_state" / "state.json"
    state = json.loads(state_file.read_text())
    del state["counters"]["seconds"]
    state_file.write_text(json.dumps(state))
    checkpoint = tmp_path / "rl" / "checkpoints" / "0000020"
    branch = f"run_dir={tmp_path / 'branch'}"
    assert (
        main(["finetune", str(tmp_path / "rl" / "config.yaml"), f"resume={checkpoint}", branch])
        == 0
    )
    out = capsys.readouterr().out.splitlines()[-1]
    assert "40 env steps (20 since the resume, " in out and " in " not in out.split(";")[-1]
    # the branch, read back once it ran its budget, still has no total
    config = str(tmp_path / "rl" / "config.yaml")
    assert main(["finetune", config, f"resume={tmp_path / 'branch'}"]) == 0
    assert "40 env steps (the run had already ended)" in capsys.readouterr().out


def _resume_keeps_the_device_unless_told(checkpoint) -> None:
    """Resuming keeps the saved ``device`` (``auto`` here); ``device=`` overrides it, and a
    checkpoint saved before the option existed resumes on the CPU, where it ran."""
    from robopolicy.rl.finetune import _resumed_config

    def resumed_device(*overrides: str) -> str:
        cfg = load_config(None, FinetuneConfig, list(overrides))
        return _resumed_config(cfg, checkpoint).device

    assert resumed_device() == "auto"
    assert resumed_device("device=cpu") == "cpu"
    config_file = checkpoint / "config.yaml"
    lines = config_file.read_text().splitlines()
    config_file.write_text("\n".join(x for x in lines if not x.strip().startswith("device:")))
    assert "device" not in read_config(checkpoint)["finetune"]
    assert resumed_device() == "cpu"


def _served_residual_acts_like_the_local_one(checkpoint: str) -> None:
    """``robopolicy serve`` on a residual checkpoint: base + residual as one policy; with the
    same random stream for the base's sampling noise, the same actions as in process."""
    server = PolicyServer(ServeConfig(checkpoint=checkpoint, port=0))
    local = load_rl_agent(checkpoint, read_config(checkpoint)).session()
    local.setup(1, GRIPPER)
    rng = np.random.default_rng(0)
    with PolicyClient(f"ws://127.0.0.1:{server.start_background()}") as client:
        spec = client.metadata["observations"]
        for step in range(10):  # more than one base chunk
            obs = {k: rng.normal(size=v["shape"]).astype(np.float32) for k, v in spec.items()}
            torch.manual_seed(step)
            served = client.act(obs)
            torch.manual_seed(step)
            expected = local.act({k: v[None] for k, v in obs.items()}, None)[0]
            np.testing.assert_allclose(served, expected, atol=1e-5)
            assert served[GRIPPER[0]] in (-1.0, 1.0)
    with pytest.raises(ValueError, match="do not apply to an RL checkpoint"):
        PolicyServer(ServeConfig(checkpoint, port=0, execution=ExecutionConfig(mode="rti")))


def _served_residual_never_sends_non_finite_actions(checkpoint: str) -> None:
    """A finite observation that makes the base's network return NaN (float32 3e38) gets an
    error reply, not a NaN action; the episode's poisoned base chunk does not serve the next
    valid observations. With the guard refusing such observations, it never reaches the base."""
    strict = ServeConfig(checkpoint=checkpoint, port=0, obs_guard=ObsGuardConfig(action="error"))
    for cfg in (ServeConfig(checkpoint=checkpoint, port=0), strict):
        server = PolicyServer(cfg)
        with PolicyClient(f"ws://127.0.0.1:{server.start_background()}") as client:
            spec = client.metadata["observations"]
            centre = server.policy.normalizer.unnormalize  # of the training range: valid
            valid = {k: centre(k, torch.zeros(v["shape"])).numpy() for k, v in spec.items()}
            poisoned = {k: np.full(v["shape"], np.float32(3e38)) for k, v in spec.items()}
            with pytest.raises(ServerError, match="non-finite action|far outside"):
                client.act(poisoned)
            for _ in range(10):  # more than one base chunk
                assert np.isfinite(client.act(valid)).all()


def test_finetune_rejects_bad_bases(tiny_run, tmp_path) -> None:
    with pytest.raises(Exception, match="checkpoint not found"):
        finetune(_finetune_config(tmp_path / "missing", tmp_path))
    with pytest.raises(ConfigError, match="acts in 4 dims"):
        finetune(_finetune_config(tiny_run, tmp_path, "env_id=robopolicy/PushT-v0"))


def test_finetune_names_what_the_base_lacks(tiny_run, tmp_path) -> None:
    """A base whose task names no dataset (or no env) is an error, not a run without demos."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_run / "checkpoints" / "0000010", base)
    config = base / "config.yaml"
    lines = config.read_text().splitlines()
    config.write_text("\n".join(x for x in lines if not x.strip().startswith("dataset:")))
    with pytest.raises(ConfigError, match="names a dataset"):
        finetune(_finetune_config(base, tmp_path))
    assert not (tmp_path / "rl").exists()
    lines = config.read_text().splitlines()
    config.write_text("\n".join(x for x in lines if not x.strip().startswith("env_id:")))
    with pytest.raises(ConfigError, match="names no task env_id"):
        finetune(_finetune_config(base, tmp_path))


def test_finetune_device_is_checked(tiny_run, tmp_path) -> None:
    from robopolicy.device import resolve_device
    from robopolicy.rl.config import validate_finetune_config

    with pytest.raises(ValueError, match="device 'banana' is not a torch device"):
        validate_finetune_config(_finetune_config(tiny_run, tmp_path, "device=banana"))
    with pytest.raises(ValueError, match="only auto, cpu and cuda"):
        validate_finetune_config(_finetune_config(tiny_run, tmp_path, "device=meta"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
            validate_finetune_config(_finetune_config(tiny_run, tmp_path, "device=cuda"))
        assert resolve_device("auto") == torch.device("cpu")


def test_gripper_gain_and_correlated_noise_settings_are_checked(tiny_run, tmp_path) -> None:
    from robopolicy.rl.config import validate_finetune_config

    def check(*extra: str) -> None:
        validate_finetune_config(_finetune_config(tiny_run, tmp_path, *extra))

    check("residual_gripper_gain=2.0", "agent.explore_correlation=0.9")
    with pytest.raises(ValueError, match="residual_gripper_gain 0.5: must be 0, or > 1"):
        check("residual_gripper_gain=0.5")
    with pytest.raises(ValueError, match="with method residual"):
        check("method=dsrl_sac", "agent.algo=sac", "demo_fraction=0", "residual_gripper_gain=2")
    with pytest.raises(ValueError, match="explore_correlation shapes TD3"):
        check("agent.algo=sac", "agent.explore_correlation=0.5")
    check("residual_gripper_by_critic=true")
    with pytest.raises(ValueError, match="not together with residual_gripper_gain"):
        check("residual_gripper_by_critic=true", "residual_gripper_gain=2")


def test_critic_chosen_gripper_is_handed_over_saved_and_reloaded(tiny_run, tmp_path) -> None:
    from robopolicy.checkpoint import load_state, load_training_state

    finetune(_finetune_config(tiny_run, tmp_path, "residual_gripper_by_critic=true"))
    checkpoint = tmp_path / "rl" / "checkpoints" / "0000040"
    config = read_config(checkpoint)
    assert config["rl"]["gripper_by_critic"]  # the actor had started: the critic chose
    trained = load_training_state(checkpoint)["learner"]
    agent = load_rl_agent(checkpoint, config).session()
    agent.setup(1, GRIPPER)
    reloaded = agent.base.gripper_critic.state_dict()
    assert reloaded.keys() == {k[len("critic.") :] for k in trained if k.startswith("critic.")}
    assert all(torch.equal(v, trained[f"critic.{k}"]) for k, v in reloaded.items())
    obs = {k: np.zeros((1, *s), np.float32) for k, s in agent.policy.shapes.obs.items()}
    assert agent.act(obs, None)[0, GRIPPER[0]] in (-1.0, 1.0)
    # Before the actor starts, the base keeps the gripper and no critic is saved.
    early = tmp_path / "early"
    finetune(
        _finetune_config(
            tiny_run,
            early,
            "residual_gripper_by_critic=true",
            "critic_warmup_updates=1000",
        )
    )
    checkpoint = early / "rl" / "checkpoints" / "0000040"
    assert not read_config(checkpoint)["rl"]["gripper_by_critic"]
    assert not any(k.startswith("critic.") for k in load_state(checkpoint, "model"))
    with pytest.raises(ConfigError, match="no open/close action dims"):
        finetune(
            _finetune_config(
                tiny_run,
                tmp_path / "pusht",
                "residual_gripper_by_critic=true",
                "env_id=robopolicy/PushT-v0",
            )
        )


def test_nan_observations_stop_cleanly(tiny_run, tmp_path, monkeypatch) -> None:
    original = ResidualBase.step

    def poisoned(self, obs, rows=None):
        out = original(self, obs, rows)
        training = len(self.executors) == 2  # not the demo relabelling or the eval's base
        late = self.executors[0].actions_executed > 12
        return out * float("nan") if training and late else out

    monkeypatch.setattr(ResidualBase, "step", poisoned)
    with pytest.raises(RLDivergedError, match="non-finite.*last good checkpoint is .*0000020"):
        finetune(_finetune_config(tiny_run, tmp_path, "eval_every=0"))


def _tiny_bench(tiny_run, tmp_path, *overrides: str):
    """A residual bench on Lift from the tiny base: 2 seeds of 20 env steps, evals every 10."""
    from omegaconf import OmegaConf

    from robopolicy.bench import rl

    tiny = ["agent.hidden_dim=16", "agent.critic_heads=2", "agent.batch_size=8", "num_threads=1"]
    return OmegaConf.merge(
        OmegaConf.structured(rl.Config),
        {
            "suite": "residual",
            "tasks": [
                {
                    "name": "lift",
                    "base_train_config": "train/lift_diffusion_mlp_scarce.yaml",
                    "collect_config": "collect/lift_scarce.yaml",
                    "base": str(tiny_run),
                    "methods": {"residual": "rl/residual_lift.yaml"},
                }
            ],
            "seeds": [0, 1],
            "env_steps": 20,
            "eval_every": 10,
            "eval_episodes": 2,
            "final_eval_episodes": 2,
            "overrides": ["warmup_steps=10", "critic_warmup_updates=2", *overrides, *tiny],
            "out_root": str(tmp_path),
        },
    )


def test_bench_rl_resumes_an_interrupted_bench(tiny_run, tmp_path) -> None:
    """``resume=<bench folder>``: a finished run is read back, an interrupted one goes on from
    its newest checkpoint, in the same folder; a bench with other settings is refused."""
    import shutil

    from robopolicy.bench import rl

    cfg = _tiny_bench(tiny_run, tmp_path, "save_every=10")
    first = rl.run(cfg)["tasks"]["lift"]["runs"]
    out = next((tmp_path / "residual").iterdir())
    seed1 = out / "lift" / "residual" / "seed1"  # as if killed after its step-10 checkpoint
    shutil.rmtree(seed1 / "checkpoints" / "0000020")
    shutil.rmtree(seed1 / "eval-0000020")
    (seed1 / "checkpoints" / "last").unlink()
    (seed1 / "checkpoints" / "last").symlink_to("0000010")
    state_file = seed1 / "checkpoints" / "0000010" / "training_state" / "state.json"
    state = json.loads(state_file.read_text())
    del state["counters"]["seconds"]  # as saved before runs kept their clock
    state_file.write_text(json.dumps(state))

    cfg.resume = str(out)
    cfg.tasks[0].base = str(tiny_run / "checkpoints" / "last")  # the same base, spelt otherwise
    base_eval = out / "lift" / "base_eval" / "eval.json"
    made = base_eval.stat().st_mtime_ns
    resumed = rl.run(cfg)["tasks"]["lift"]["runs"]
    assert list((tmp_path / "residual").iterdir()) == [out]
    assert base_eval.stat().st_mtime_ns == made  # read back, not evaluated again
    for key in ("curve", "final_success", "env_steps_to_target", "minutes"):
        assert resumed["residual/seed0"][key] == first["residual/seed0"][key]
    assert [step for step, _ in resumed["residual/seed1"]["curve"]] == [0, 10, 20]
    assert resumed["residual/seed1"]["curve"][:2] == first["residual/seed1"]["curve"][:2]
    assert resumed["residual/seed1"]["minutes"] is None
    assert (seed1 / "checkpoints" / "0000020" / "meta.json").is_file()
    report = (out / "report.md").read_text()
    assert "lift | residual | 2 |" in report and "Wall time n/a: the run's checkpoints" in report
    # a resume of one seed keeps the other seed's run in the report
    cfg.seeds = [1]
    assert sorted(rl.run(cfg)["tasks"]["lift"]["runs"]) == ["residual/seed0", "residual/seed1"]

    cfg.overrides = [*cfg.overrides, "agent.hidden_dim=32"]
    with pytest.raises(ConfigError, match=r"another config .*agent.hidden_dim=16 \(now 32\)"):
        rl.run(cfg)
    cfg.env_steps = 30
    with pytest.raises(
        ConfigError, match="ran with env_steps=20, this bench asks for env_steps=30"
    ):
        rl.run(cfg)
    cfg.env_steps, cfg.resume = 20, str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="is not a bench folder of suite 'residual'"):
        rl.run(cfg)


def test_bench_rl_writes_curves_and_a_report(tiny_run, tmp_path) -> None:
    from robopolicy.bench import rl

    cfg = _tiny_bench(tiny_run, tmp_path)
    cfg.base_draws = 2
    results = rl.run(cfg)
    lift = results["tasks"]["lift"]
    assert len(lift["base_draw_success"]) == 2
    assert max(lift["base_draw_success"]) <= lift["base_any_draw"] <= 1
    runs = lift["runs"]
    assert sorted(runs) == ["residual/seed0", "residual/seed1"]
    assert [step for step, _ in runs["residual/seed0"]["curve"]] == [0, 10, 20]
    out = next((tmp_path / "residual").iterdir())
    assert (out / "lift.png").is_file()
    assert (out / "lift" / "base_draws" / "draw1" / "eval.json").is_file()
    assert "BC base (no RL)" in (out / "report.md").read_text()
    assert "solved in any of 2 draws" in (out / "report.md").read_text()
    rng = torch.random.get_rng_state()
    rl._seeded_eval(tiny_run, cfg, tmp_path / "draws", sampler_seed=3)  # leaves the RNG as it was
    assert torch.equal(torch.random.get_rng_state(), rng)

    # a later bench runs another method and takes the residual curves from this one
    cfg.suite, cfg.seeds, cfg.methods, cfg.previous = "later", [0], ["again"], [str(out)]
    cfg.base_draws = 0
    cfg.tasks[0].methods["again"] = "rl/residual_lift.yaml"
    later = rl.run(cfg)["tasks"]["lift"]["runs"]
    assert sorted(later) == ["again/seed0", "residual/seed0", "residual/seed1"]
    assert later["residual/seed1"]["from"] == str(out / "results.json")
    assert later["residual/seed1"]["curve"] == runs["residual/seed1"]["curve"]
    earlier = rl._read_results(str(out))
    digest = rl._weights_digest(tiny_run, "test")
    assert rl._previous_runs(*earlier, "lift", digest, exclude=["residual"]) == {}
    report = (next((tmp_path / "later").iterdir()) / "report.md").read_text()
    assert f"runs of an earlier bench, {out / 'results.json'}" in report

    # report the base and earlier runs only, from the earlier bench's base
    cfg.suite, cfg.methods, cfg.tasks[0].base = "report_only", ["none"], None
    only = rl.run(cfg)["tasks"]["lift"]
    assert only["base"] == str(tiny_run)
    assert sorted(only["runs"]) == ["residual/seed0", "residual/seed1"]
    later_out = next((tmp_path / "later").iterdir())
    cfg.previous = [str(later_out), str(out)]  # later's residual runs are out's: one each
    merged = rl.run(cfg)["tasks"]["lift"]["runs"]
    assert sorted(merged) == ["again/seed0", "residual/seed0", "residual/seed1"]
    assert merged["residual/seed0"]["from"] == str(out / "results.json")
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    copy.write_text((out / "results.json").read_text())
    cfg.previous = [str(out), str(copy)]  # two benches that each ran residual/seed0
    with pytest.raises(ConfigError, match="residual/seed0 is in both"):
        rl.run(cfg)
    cfg.methods = ["residul"]
    with pytest.raises(ConfigError, match=r"methods: \['residul'\] not in"):
        rl.run(cfg)

    # ... but never from another starting point
    other = tmp_path / "other_base"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ConfigError, match="weights differ"):
        rl._previous_runs(*earlier, "lift", rl._weights_digest(other, "test"), exclude=[])
    moved = {"tasks": {"lift": {**earlier[1]["tasks"]["lift"], "base": str(tmp_path / "moved")}}}
    with pytest.raises(ConfigError, match="previous: .*checkpoint not found"):
        rl._previous_runs(earlier[0], moved, "lift", digest, exclude=[])
    with pytest.raises(ConfigError, match="not a bench results.json"):
        rl._read_results(str(tmp_path / "missing"))

    # a method that needs a GPU this machine lacks stops the bench before any work
    if not torch.cuda.is_available():
        cfg.suite, cfg.previous, cfg.methods = "gpu", [], ["again"]
        cfg.tasks[0].methods["again"] = "rl/dsrl_na_lift_gpu.yaml"
        with pytest.raises(ConfigError, match="lift again .*dsrl_na_lift_gpu.yaml.*CUDA is not"):
            rl.run(cfg)
        assert not (tmp_path / "gpu").exists()


def test_image_observations_reach_the_actor_as_base_encoder_features() -> None:
    from bc_fixtures import TINY

    from robopolicy.data.normalizer import Normalizer
    from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy

    shapes = PolicyShapes(
        obs={"state": [3], "cam_image": [16, 16, 3]}, action_dim=4, control_hz=10.0
    )
    normalizer = Normalizer.fit({"state": torch.randn(50, 3), "actions": torch.rand(50, 4)})
    cfg = PolicyConfig(type="diffusion", backbone="mlp", image_feature_dim=8, **TINY)
    policy = make_policy(cfg, shapes, normalizer)
    base = ResidualBase(policy, num_envs=2, discrete_dims=GRIPPER)
    obs = {
        "state": np.zeros((2, 3), np.float32),
        "cam_image": np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8),
    }
    actor_obs = base.step(obs)
    assert actor_obs.shape == (2, policy.obs_encoder.out_dim + 4)
    assert not any(p.requires_grad for p in policy.parameters())  # no second encoder learns


def test_finetune_command_reports_bad_input(tmp_path, capsys) -> None:
    config = "configs/rl/residual_lift.yaml"
    assert main(["finetune", config, f"base={tmp_path / 'nothing'}"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["finetune", config, "method=ppo"]) == 2
    assert "method 'ppo' not in" in capsys.readouterr().err
    assert main(["finetune", config, "agent.critic_heads=two"]) == 2
    assert "agent.critic_heads" in capsys.readouterr().err
    dsrl = ["method=dsrl_sac", "demo_fraction=0", "agent.algo=td3"]
    assert main(["finetune", config, *dsrl]) == 2
    assert "built on SAC" in capsys.readouterr().err
    # agent settings are checked before anything is loaded or written
    for setting, message in (
        ("agent.actor_delay=0", "agent.actor_delay must be >= 1"),
        ("agent.init_alpha=0", "agent.init_alpha"),
        ("agent.activation=gelu", "agent.activation 'gelu'"),
    ):
        assert main(["finetune", config, f"run_dir={tmp_path / 'rl'}", setting]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "rl").exists()
    scratch = ["configs/rl/sac_scratch_lift.yaml", f"run_dir={tmp_path / 'rl'}"]
    assert main(["finetune", *scratch, "obs_keys=[object,cube_velocity]"]) == 2
    assert "obs_keys ['cube_velocity'] are not observations" in capsys.readouterr().err


def test_resumed_bench_keeps_or_finishes_the_base_it_trained(tiny_run, tmp_path) -> None:
    """A resumed bench reuses the base it had trained to its steps, and finishes one it was
    still training from the newest checkpoint (rather than refusing its folder)."""
    import shutil

    import yaml

    from robopolicy.bench import rl
    from robopolicy.checkpoint import read_meta

    out = tmp_path / "bench"
    shutil.copytree(tiny_run, out / "lift" / "base", symlinks=True)
    saved = read_config(tiny_run)
    saved.pop("shapes")
    saved.pop("resume", None)
    train_config = tmp_path / "tiny_train.yaml"
    train_config.write_text(yaml.safe_dump(saved))
    task = rl.Task("lift", str(train_config), "collect/lift_scarce.yaml")
    finished = rl._train_base(task, out)
    assert finished.name == "0000010" and read_meta(finished)["step"] == 10

    saved["optim"]["steps"] = 20
    train_config.write_text(yaml.safe_dump(saved))
    assert read_meta(rl._train_base(task, out))["step"] == 20


def test_rl_run_killed_and_resumed_equals_the_uninterrupted_run(tmp_path) -> None:
    """Killed mid-episode (20 of Lift's 100 steps per sub-env): the resumed run replays the
    running episodes and ends with the uninterrupted run's every tensor, replay included."""
    result = rl_resume_exactness(tmp_path)
    assert result["max_abs_diff"] == 0.0 and result["tensors"] > 50
    assert 40 <= result["killed_at"] < 160 and result["duplicate_log_rows"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["residual", "dsrl_sac", "expo"])
def test_rl_with_a_base_killed_and_resumed_is_exact(tiny_run, tmp_path, method) -> None:
    """The bases' per-episode state comes back too: residual's planned actions, DSRL's
    observation histories, EXPO's trained base and its online episodes (320 env steps: Lift's
    100-step episodes end and enter the base's imitation data)."""
    steps = 320 if method == "expo" else 160
    result = rl_resume_exactness(tmp_path, method=method, base=str(tiny_run), env_steps=steps)
    assert result["max_abs_diff"] == 0.0
