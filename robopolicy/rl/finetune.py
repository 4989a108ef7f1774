"""``robopolicy finetune CONFIG``: improve a BC policy by off-policy RL (or learn from scratch).

One loop, read top to bottom: act (warm-up actions first), step the vector env, store the
transition, do ``updates_per_step`` gradient updates per agent step (an env step; for DSRL an
executed chunk; critic only for the first ``critic_warmup_updates``), and evaluate, log and
checkpoint on env-step boundaries.

Resuming goes on with the run's saved config (``RESUMABLE`` lists what a resume may change)
and restores the learner, its optimisers, the online replay, the counters (with the run's wall
clock), the RNG and the episodes that were running (replayed from their seeds and actions): a
killed and resumed run ends with the same tensors as one never stopped. The result, plot and
summary cover the whole run: each checkpoint keeps the eval history that led to it. Resuming a
run that already ran its budget returns its recorded result.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from robopolicy.checkpoint import (
    load_training_state,
    read_config,
    read_meta,
    resolve_checkpoint,
    restoring,
    save_checkpoint,
)
from robopolicy.config import ConfigError, to_dict
from robopolicy.device import resolve_device
from robopolicy.files import atomic_save_figure, atomic_write_text
from robopolicy.resume import resumed_config
from robopolicy.rl.actors import FlatObsAgent, ResidualAgent
from robopolicy.rl.config import RESUMABLE, FinetuneConfig, validate_finetune_config
from robopolicy.rl.dsrl import NoiseAgent, NoiseAliasingLearner, NoiseBase, NoiseMDP
from robopolicy.rl.learner import Learner
from robopolicy.rl.mdp import MDP, FlatMDP, ResidualMDP, seed_stream
from robopolicy.rl.replay import ReplayBuffer, sample_mixed
from robopolicy.rl.residual import ResidualBase, demo_buffer
from robopolicy.rl.run_record import finished_result, saved_history
from robopolicy.runlog import RunLogger, eval_metrics, plan_run_dir, resumed_in_place
from robopolicy.sim.evaluate import evaluate, summary_line
from robopolicy.sim.vector import make_env, make_vector_env
from robopolicy.training import state as train_state

TRAIN_SEED_STRIDE = 1_000_000  # training episode seeds: (seed + 1) * stride + episode index


class RLDivergedError(RuntimeError):
    """Non-finite observations or losses: training stopped, earlier checkpoints are intact."""


@dataclass
class Setup:
    """What the method adds to the generic loop: how observations become the actor's input and
    actor outputs become the critic's (and env's) action."""

    env_id: str
    env_kwargs: dict[str, Any]
    policy: Any = None  # the frozen base (residual, DSRL)
    obs_keys: list[str] | None = None  # scratch
    demos: ReplayBuffer | None = None
    base_checkpoint: str | None = None
    discrete_dims: tuple[int, ...] = ()  # open/close action dims of the env


def finetune(
    cfg: FinetuneConfig, on_eval: Callable[[int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) one RL run. ``on_eval(env_steps, summary)`` hears of every eval as it
    is made (a sweep reports them to its scheduler, which may stop the run early)."""
    resume_from = resolve_checkpoint(cfg.resume) if cfg.resume else None
    if resume_from is not None:
        cfg = _resumed_config(cfg, resume_from)
        if read_meta(resume_from)["step"] >= cfg.env_steps:
            print(f"[finetune] {resume_from} already ran the budget of {cfg.env_steps} env steps")
            with restoring(resume_from):
                return finished_result(resume_from)
    validate_finetune_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # cuda:N: its RNG state and streams are the current ones
    run_dir = plan_run_dir(cfg.run_dir, cfg.name, resume_from)
    torch.manual_seed(cfg.seed)
    setup = _setup(cfg, device)

    # DSRL steps sub-envs one by one inside a chunk: in-process (synchronous) envs
    asynchronous = not cfg.method.startswith("dsrl")
    envs = make_vector_env(setup.env_id, cfg.num_envs, setup.env_kwargs, asynchronous)
    # seconds: the run's wall clock at the last save, summed over the processes whose work led
    # to that checkpoint (None when resumed from a checkpoint saved before runs kept it)
    counters = {"env_steps": 0, "episodes": 0, "updates": 0, "update_budget": 0.0, "seconds": 0.0}
    try:
        mdp = _make_mdp(cfg, setup, envs)
        learner = _make_learner(cfg, mdp).to(device)
        online = ReplayBuffer(mdp.obs_dim, mdp.critic_action_dim, cfg.buffer_capacity, cfg.num_envs)
        running = None
        if resume_from is not None:
            with restoring(resume_from):
                running = _restore(resume_from, learner, online, counters)
        _hand_gripper_to_critic(cfg, mdp, learner, counters)
        mdp.episodes = counters["episodes"]
        mdp.seeds = seed_stream((cfg.seed + 1) * TRAIN_SEED_STRIDE + counters["episodes"])
    except BaseException:
        envs.close()
        raise
    # Everything above checked the settings, the base and the data: only now a folder.
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    logger = RunLogger(run_dir, enabled=True, resumed_at=resumed_in_place(run_dir, resume_from))
    recent = deque(maxlen=20)  # (success, return) of the latest training episodes
    running_return = np.zeros(cfg.num_envs)
    running_success = np.zeros(cfg.num_envs, dtype=bool)
    if running is not None:
        recent.extend((bool(s), float(r)) for s, r in running["plain"]["recent"])
        running_return[:] = running["plain"]["running_return"]
        running_success[:] = running["plain"]["running_success"]
    last_checkpoint: Path | None = resume_from
    history = saved_history(resume_from) if resume_from is not None else []
    update_metrics: dict[str, float] = {}
    start, start_steps, start_seconds = (
        time.perf_counter(),
        counters["env_steps"],
        counters["seconds"],
    )

    def save(metrics: dict[str, Any]) -> Path:
        """A checkpoint of everything now, with the run's clock brought up to date."""
        if start_seconds is not None:
            counters["seconds"] = start_seconds + time.perf_counter() - start
        episodes = {
            "recent": list(recent),
            "running_return": running_return.tolist(),
            "running_success": running_success.tolist(),
        }
        return _save(
            run_dir, cfg, setup, learner, online, counters, history, metrics, mdp, episodes
        )

    progress = tqdm(
        total=cfg.env_steps, initial=counters["env_steps"], desc=f"finetune {cfg.name}", unit="step"
    )

    def evaluate_now(n_episodes: int, out_dir: Path | None = None) -> dict[str, Any]:
        summary = evaluate(
            setup.env_id,
            _eval_agent(cfg, setup, learner, mdp),
            n_episodes=n_episodes,
            seed=cfg.eval_seed,
            num_envs=2,
            env_kwargs=setup.env_kwargs,
            out_dir=out_dir,
            video_episodes=cfg.video_episodes if out_dir else 0,
            progress=False,
        )
        row = {"env_steps": counters["env_steps"], **eval_metrics(summary)}
        history.append(row)
        logger.log(counters["env_steps"], "eval", eval_metrics(summary))
        progress.write(f"[{counters['env_steps']} env steps] {summary_line(summary)}")
        if on_eval is not None:
            on_eval(counters["env_steps"], summary)
        return summary

    try:
        if counters["env_steps"] == 0 and cfg.eval_every:
            evaluate_now(cfg.eval_episodes)  # the starting point: the base policy (or random)
        # a resumed run goes on with the episodes that were running (replayed), as if never
        # stopped; checkpoints saved before runs kept them start new ones
        state = mdp.restore(**running["mdp"]) if running else mdp.reset()
        while counters["env_steps"] < cfg.env_steps:
            # ---- act ----------------------------------------------------------------------
            if counters["env_steps"] < cfg.warmup_steps:
                action = _warmup_action(cfg, state.shape[0], mdp.action_dim)
            else:
                action = learner.act(state, explore=True)
            step = mdp.step(action)
            try:
                online.add(
                    state,
                    step.critic_action,
                    step.reward + cfg.reward_offset,
                    step.next_state,
                    torch.as_tensor(step.terminated),
                    torch.as_tensor(step.truncated),
                )
            except ValueError as err:
                raise RLDivergedError(_diverged(err, counters, last_checkpoint)) from err
            running_return += step.reward.numpy()
            running_success |= step.success
            ended = step.terminated | step.truncated
            for i in np.flatnonzero(ended):
                recent.append((bool(running_success[i]), float(running_return[i])))
            running_return[ended] = 0.0
            running_success[ended] = False
            counters["episodes"] = mdp.episodes
            state = step.start_state
            before = counters["env_steps"]
            counters["env_steps"] += step.env_steps
            progress.update(step.env_steps)

            # ---- learn --------------------------------------------------------------------
            if counters["env_steps"] >= cfg.warmup_steps:
                counters["update_budget"] += cfg.updates_per_step * cfg.num_envs  # agent steps
                while counters["update_budget"] >= 1:
                    batch = sample_mixed(
                        online,
                        setup.demos,
                        cfg.agent.batch_size,
                        cfg.demo_fraction,
                        cfg.agent.n_step,
                        cfg.agent.gamma,
                    )
                    _hand_gripper_to_critic(cfg, mdp, learner, counters)
                    try:
                        update_metrics = learner.update(
                            batch.to(learner.device),
                            update_actor=counters["updates"] >= cfg.critic_warmup_updates,
                        )
                    except FloatingPointError as err:
                        raise RLDivergedError(_diverged(err, counters, last_checkpoint)) from err
                    counters["updates"] += 1
                    counters["update_budget"] -= 1

            # ---- log, evaluate, save ------------------------------------------------------
            now = counters["env_steps"]
            if _crossed(before, now, cfg.log_every):
                row = {
                    "episodes": counters["episodes"],
                    "updates": counters["updates"],
                    "env_steps_per_s": (now - start_steps) / (time.perf_counter() - start),
                    **update_metrics,
                }
                if recent:  # training episodes (with exploration noise) finished lately
                    row["success_rate"] = float(np.mean([s for s, _ in recent]))
                    row["return"] = float(np.mean([r for _, r in recent]))
                    progress.set_postfix(success=f"{row['success_rate']:.0%}")
                logger.log(now, "train", row)
            if cfg.eval_every and _crossed(before, now, cfg.eval_every) and now < cfg.env_steps:
                evaluate_now(cfg.eval_episodes)
            if _crossed(before, now, cfg.save_every) and now < cfg.env_steps:
                last_checkpoint = save({})
        progress.close()
        final = evaluate_now(cfg.final_eval_episodes, run_dir / f"eval-{counters['env_steps']:07d}")
        last_checkpoint = save(eval_metrics(final))
    finally:
        progress.close()
        envs.close()
        logger.close()
    seconds = counters["seconds"]
    _plot(history, run_dir, cfg.name, has_success=setup.env_id.startswith("robopolicy/"))
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(last_checkpoint),
        "final": final,
        "history": history,
        "minutes": None if seconds is None else seconds / 60,  # the whole run's
        "session_minutes": (time.perf_counter() - start) / 60,  # this process's
        "env_steps": counters["env_steps"],
        "start_env_steps": start_steps,  # 0, or where a resumed run went on
    }


def _resumed_config(cfg: FinetuneConfig, checkpoint: Path) -> FinetuneConfig:
    """The run's saved config with ``cfg``'s ``RESUMABLE`` settings; ``device`` ``auto`` keeps
    the saved device (a run saved before the option existed ran on the CPU, and resumes there),
    another moves the run (a GPU run can go on on a CPU)."""
    resumed = resumed_config(cfg, checkpoint, FinetuneConfig, RESUMABLE, section="finetune")
    if cfg.device == "auto":
        resumed.device = read_config(checkpoint)["finetune"].get("device", "cpu")
    return resumed


# ---- the method's pieces ---------------------------------------------------------------------
def _setup(cfg: FinetuneConfig, device: torch.device) -> Setup:
    if cfg.method == "scratch":
        env = make_env(cfg.env_id, **(cfg.env_kwargs or {}))
        space = env.observation_space
        env.close()
        keys = None
        if hasattr(space, "spaces"):  # sorted: the flattened order does not hang on the config's
            keys = sorted(cfg.obs_keys or space.spaces)
            unknown = sorted(set(keys) - set(space.spaces))
            if unknown:
                raise ConfigError(
                    f"obs_keys {unknown} are not observations of {cfg.env_id} "
                    f"(it has {sorted(space.spaces)})"
                )
        return Setup(cfg.env_id, dict(cfg.env_kwargs or {}), obs_keys=keys)
    from robopolicy.checkpoint import load_policy
    from robopolicy.data.hdf5 import load_episodes

    base_path = resolve_checkpoint(cfg.base)
    policy = load_policy(base_path, device=device)
    task = read_config(base_path).get("task", {})
    env_id = cfg.env_id or task.get("env_id")
    if not env_id:
        raise ConfigError(f"base {base_path} names no task env_id: set env_id=<gymnasium id>")
    env_kwargs = dict(
        cfg.env_kwargs if cfg.env_kwargs is not None else task.get("env_kwargs") or {}
    )
    env = make_env(env_id, **env_kwargs)
    env_action_dim = int(np.prod(env.action_space.shape))
    discrete = tuple(getattr(env.unwrapped, "discrete_action_dims", ()))
    env.close()
    if cfg.residual_gripper_by_critic and not discrete:
        raise ConfigError(
            f"residual_gripper_by_critic: {env_id} has no open/close action dims to choose"
        )
    if env_action_dim != policy.action_dim:
        raise ConfigError(
            f"base {base_path} acts in {policy.action_dim} dims but {env_id} takes {env_action_dim}"
        )
    setup = Setup(
        env_id,
        env_kwargs,
        policy=policy,
        base_checkpoint=str(base_path),
        discrete_dims=discrete,
    )
    demos_path = cfg.demos or task.get("dataset")
    if cfg.method == "residual" and cfg.demo_fraction > 0:
        if not demos_path:
            raise ConfigError(
                f"demo_fraction {cfg.demo_fraction} asks for demonstrations, but neither demos= "
                f"nor the base's task ({base_path}) names a dataset: set demos=<file.hdf5>, or "
                "demo_fraction=0"
            )
        episodes = load_episodes(demos_path, keys=list(policy.shapes.obs))
        setup.demos = demo_buffer(policy, episodes, discrete, reward_offset=cfg.reward_offset)
    return setup


def _make_mdp(cfg: FinetuneConfig, setup: Setup, envs) -> MDP:
    seeds = seed_stream(0)  # replaced once the episode count is known (resume)
    if cfg.method == "residual":
        base = ResidualBase(
            setup.policy,
            cfg.num_envs,
            setup.discrete_dims,
            cfg.residual_gripper_gain,
            cfg.agent.action_scale,
        )
        return ResidualMDP(envs, seeds, base)
    if cfg.method.startswith("dsrl"):
        base = NoiseBase(setup.policy, cfg.num_envs, setup.discrete_dims, cfg.dsrl_noise)
        return NoiseMDP(envs, seeds, base, chunk_critic=cfg.method == "dsrl_na")
    return FlatMDP(envs, seeds, setup.obs_keys)


def _make_learner(cfg: FinetuneConfig, mdp: MDP) -> Learner:
    if cfg.method == "dsrl_na":
        return NoiseAliasingLearner(
            cfg.agent, mdp.obs_dim, mdp.action_dim, mdp.critic_action_dim, mdp.critic_action
        )
    return Learner(
        cfg.agent,
        mdp.obs_dim,
        mdp.action_dim,
        critic_action_dim=mdp.critic_action_dim,
        critic_action=mdp.critic_action,
        target_noise_weights=mdp.target_noise_weights(),
    )


def _hand_gripper_to_critic(cfg: FinetuneConfig, mdp: MDP, learner: Learner, counters) -> None:
    """``residual_gripper_by_critic``: the critic chooses open/close from the first actor update
    on (acting, TD targets, the actor's loss); before that, during warm-up and the critic-only
    updates, the base's command stands, as the zero-initialised actor keeps the arm's. At
    least one critic update comes first, so a freshly initialised critic never chooses."""
    updates = counters["updates"]
    if cfg.residual_gripper_by_critic and updates >= max(cfg.critic_warmup_updates, 1):
        mdp.base.gripper_critic = learner.critic


def _gripper_critic(mdp: MDP):
    """The critic that chooses the gripper now, if one does (residual only)."""
    return getattr(getattr(mdp, "base", None), "gripper_critic", None)


def _warmup_action(cfg: FinetuneConfig, n: int, action_dim: int) -> torch.Tensor:
    """Residual: the base action plus small Gaussian noise; DSRL: the base's own N(0, I) noise
    (within the bound); scratch: uniform random actions."""
    scale = cfg.agent.action_scale
    if cfg.method.startswith("dsrl"):
        return torch.randn(n, action_dim).clamp(-scale, scale)
    if cfg.method == "residual":
        return (cfg.agent.explore_std * scale * torch.randn(n, action_dim)).clamp(-scale, scale)
    return scale * (2 * torch.rand(n, action_dim) - 1)


def _eval_agent(cfg: FinetuneConfig, setup: Setup, learner: Learner, mdp: MDP):
    actor = copy.deepcopy(learner.actor).eval()
    if cfg.method == "residual":
        critic = _gripper_critic(mdp)
        return ResidualAgent(
            setup.policy,
            actor,
            f"residual({cfg.agent.algo})",
            cfg.residual_gripper_gain,
            cfg.agent.action_scale,
            copy.deepcopy(critic) if critic is not None else None,
        )
    if cfg.method.startswith("dsrl"):
        return NoiseAgent(
            setup.policy, actor, cfg.method, cfg.dsrl_sample_noise, noise_span=cfg.dsrl_noise
        )
    return FlatObsAgent(actor, setup.obs_keys, name=cfg.agent.algo)


# ---- bookkeeping --------------------------------------------------------------------------------
def _crossed(before: int, now: int, every: int) -> bool:
    return every > 0 and before // every != now // every


def _diverged(err: Exception, counters: dict, last: Path | None) -> str:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
    return f"stopped at env step {counters['env_steps']}: {err}; {kept}"


def _save(
    run_dir: Path,
    cfg: FinetuneConfig,
    setup: Setup,
    learner: Learner,
    online: ReplayBuffer,
    counters: dict,
    history: list[dict[str, Any]],
    metrics: dict,
    mdp: MDP,
    episodes: dict[str, Any],
) -> Path:
    gripper_critic = _gripper_critic(mdp)
    mdp_tensors, mdp_plain = mdp.state_dict()
    config = {
        "finetune": to_dict(cfg),
        "rl": {
            "method": cfg.method,
            "algo": cfg.agent.algo,
            "base": setup.base_checkpoint,
            "env_id": setup.env_id,
            "env_kwargs": setup.env_kwargs,
            "obs_keys": setup.obs_keys,
            "obs_dim": learner.obs_dim,  # the actor's
            "action_dim": learner.action_dim,
            "gripper_by_critic": gripper_critic is not None,  # its weights: critic.*
        },
        "task": {"env_id": setup.env_id, "env_kwargs": setup.env_kwargs},
    }
    training_state = {
        **learner.training_state(),
        "replay": online.state_dict(),
        "counters": counters,
        "history": history,  # the evals that led here: a resumed run reports the whole run
        "rng": train_state.rng_state(),
        "mdp_tensors": mdp_tensors,  # the running episodes, replayed on resume
        "mdp": mdp_plain,
        "episodes": episodes,  # the training episodes' statistics (logs)
    }
    weights = {f"actor.{k}": v for k, v in learner.actor.state_dict().items()}
    if gripper_critic is not None:
        weights.update({f"critic.{k}": v for k, v in gripper_critic.state_dict().items()})
    return save_checkpoint(
        run_dir / "checkpoints" / f"{counters['env_steps']:07d}",
        weights,
        config,
        step=counters["env_steps"],
        metrics=metrics,
        training_state=training_state,
    )


def _restore(
    checkpoint: Path, learner: Learner, online: ReplayBuffer, counters: dict
) -> dict[str, Any] | None:
    """Load the training state; return the running episodes to go on with (``mdp``: the
    arguments of ``MDP.restore``; ``plain``: their statistics), or None for a checkpoint
    saved before runs kept them, whose episodes end here (every env starts a new one)."""
    state = load_training_state(checkpoint)
    learner.load_training_state(state)
    online.load_state_dict(state["replay"])
    counters.update(state["counters"])
    if "seconds" not in state["counters"]:
        counters["seconds"] = None  # saved before runs kept their clock: the total is unknown
    train_state.load_rng_state(state["rng"])
    if "mdp" not in state:
        online.end_episodes()  # the saved episodes do not go on: every env is reset
        return None
    return {
        "mdp": {"tensors": state["mdp_tensors"], "plain": state["mdp"]},
        "plain": state["episodes"],
    }


def _plot(history: list[dict[str, Any]], run_dir: Path, title: str, has_success: bool) -> None:
    """``success.png`` (with Wilson bands) for tasks with a success signal, else
    ``return.png`` (e.g. gymnasium's locomotion tasks)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["env_steps"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if has_success:
        ax.plot(steps, [row["success_rate"] for row in history], marker="o")
        low = [row["success_ci_low"] for row in history]
        ax.fill_between(steps, low, [row["success_ci_high"] for row in history], alpha=0.2)
        ax.set(xlabel="env steps", ylabel="eval success", ylim=(0, 1), title=title)
        path = run_dir / "success.png"
    else:
        ax.plot(steps, [row["mean_return"] for row in history], marker="o")
        ax.set(xlabel="env steps", ylabel="eval mean return", title=title)
        path = run_dir / "return.png"
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
