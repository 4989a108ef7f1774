"""``robopolicy finetune CONFIG``: improve a BC policy by off-policy RL (or learn from scratch).

One loop, read top to bottom: act (warm-up actions first), step the vector env, store the
transition, do ``updates_per_step`` gradient updates per agent step (an env step; for DSRL an
executed chunk; critic only for the first ``critic_warmup_updates``), and evaluate, log and
checkpoint on env-step boundaries. ``finetune`` itself is four steps: ``_resolve_resume`` reads
a resume's checkpoint once, ``_build`` sets everything up (and only then makes the run's
folder), ``_train_loop`` is that loop, and ``_finish`` runs the final eval and saves.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from robopolicy.checkpoint import (
    BEST,
    load_training_state,
    read_config,
    read_meta,
    resolve_checkpoint,
    restoring,
    save_checkpoint,
)
from robopolicy.config import ConfigError, to_dict
from robopolicy.device import resolve_device
from robopolicy.files import atomic_save_figure, atomic_write_json, atomic_write_text
from robopolicy.resume import resumed_config
from robopolicy.rl import expo
from robopolicy.rl.actors import FlatObsAgent, ResidualAgent
from robopolicy.rl.config import (
    CHUNK_METHODS,
    RESUMABLE,
    FinetuneConfig,
    validate_finetune_config,
)
from robopolicy.rl.dsrl import NoiseAgent, NoiseAliasingLearner, NoiseBase, NoiseMDP
from robopolicy.rl.learner import Learner
from robopolicy.rl.mdp import MDP, FlatMDP, ResidualMDP, Step, seed_stream
from robopolicy.rl.replay import ReplayBuffer, sample_mixed
from robopolicy.rl.residual import ResidualBase, demo_buffer
from robopolicy.rl.run_record import best_eval, eval_score, finished_result, recorded_history
from robopolicy.rl.schedule import lr_factor
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
    policy: Any = None  # the base (residual, DSRL: frozen; EXPO: its denoiser trains)
    obs_keys: list[str] | None = None  # scratch
    demos: ReplayBuffer | None = None
    demo_windows: Any = None  # EXPO: the demos as the base's training windows
    base_checkpoint: str | None = None
    discrete_dims: tuple[int, ...] = ()  # open/close action dims of the env


@dataclass
class Resume:
    """The checkpoint a run goes on from, resolved once: where it is, the config the run goes on
    with and its meta (the env step it reached). Its training state is read by ``_build`` when
    the run restores it, and not kept: the replay in it is copied into the run's own buffer."""

    checkpoint: Path
    cfg: FinetuneConfig  # the run's saved config with the RESUMABLE settings given now
    meta: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.meta["step"] >= self.cfg.env_steps

    def training_state(self) -> dict[str, Any]:
        return load_training_state(self.checkpoint)


class TrainingEpisodes:
    """The training episodes' statistics for the logs (exploration noise included): the
    (success, return) of the latest that ended and the running sums of those under way. Saved
    with each checkpoint, so a resumed run logs as if never stopped."""

    def __init__(self, num_envs: int, saved: dict[str, Any] | None = None) -> None:
        self.recent: deque[tuple[bool, float]] = deque(maxlen=20)
        self.running_return = np.zeros(num_envs)
        self.running_success = np.zeros(num_envs, dtype=bool)
        if saved is not None:
            self.recent.extend((bool(s), float(r)) for s, r in saved["recent"])
            self.running_return[:] = saved["running_return"]
            self.running_success[:] = saved["running_success"]

    def record(self, step: Step) -> None:
        self.running_return += step.reward.numpy()
        self.running_success |= step.success
        ended = step.terminated | step.truncated
        for i in np.flatnonzero(ended):
            self.recent.append((bool(self.running_success[i]), float(self.running_return[i])))
        self.running_return[ended] = 0.0
        self.running_success[ended] = False

    def summary(self) -> dict[str, float]:
        """Success rate and mean return of the latest episodes; empty before one has ended."""
        if not self.recent:
            return {}
        return {
            "success_rate": float(np.mean([s for s, _ in self.recent])),
            "return": float(np.mean([r for _, r in self.recent])),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "running_return": self.running_return.tolist(),
            "running_success": self.running_success.tolist(),
        }


@dataclass
class Run:
    """What one process works with, from ``_build`` to ``_finish``: the method's pieces, the
    counters and records that a checkpoint saves, and where the run writes."""

    cfg: FinetuneConfig
    setup: Setup
    envs: Any  # gymnasium's vector env
    mdp: MDP
    learner: Learner
    online: ReplayBuffer
    # seconds: the run's wall clock at the last save, summed over the processes whose work led
    # to that checkpoint (None when resumed from a checkpoint saved before runs kept it)
    counters: dict[str, Any]
    running: dict[str, Any] | None  # the episodes a resume goes on with (``MDP.restore``'s)
    run_dir: Path
    logger: RunLogger
    episodes: TrainingEpisodes
    history: list[dict[str, Any]]  # the evals so far (a resumed run's, from the start)
    last_checkpoint: Path | None
    progress: tqdm
    started: float = field(default_factory=time.perf_counter)  # this process's clock
    start_env_steps: int = 0  # 0, or where a resumed run went on
    start_seconds: float | None = 0.0  # the run's clock at that point
    # hears of every eval as it is made: a sweep reports them to its scheduler, which may stop
    # the run early
    on_eval: Callable[[int, dict[str, Any]], None] | None = None

    def close(self) -> None:
        self.progress.close()
        self.envs.close()
        self.logger.close()


def finetune(
    cfg: FinetuneConfig, on_eval: Callable[[int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) one RL run. ``on_eval(env_steps, summary)`` hears of every eval as it
    is made (a sweep reports them to its scheduler, which may stop the run early)."""
    resume = _resolve_resume(cfg)
    if resume is not None:
        cfg = resume.cfg
        if resume.finished:
            budget = cfg.env_steps
            print(f"[finetune] {resume.checkpoint} already ran the budget of {budget} env steps")
            with restoring(resume.checkpoint):
                return finished_result(resume.checkpoint)
    validate_finetune_config(cfg)
    run = _build(cfg, resume)
    run.on_eval = on_eval
    try:
        _train_loop(run)
        final = _finish(run)
    finally:
        run.close()
    return _result(run, final)


# ---- setup ---------------------------------------------------------------------------------------
def _resolve_resume(cfg: FinetuneConfig) -> Resume | None:
    """``cfg.resume`` read once (None for a new run): every later step uses what it holds."""
    if not cfg.resume:
        return None
    checkpoint = resolve_checkpoint(cfg.resume)
    return Resume(checkpoint, _resumed_config(cfg, checkpoint), read_meta(checkpoint))


def _build(cfg: FinetuneConfig, resume: Resume | None) -> Run:
    """The base, the envs, the method's MDP and learner and the replay, restored from the
    checkpoint on a resume; the run's folder is made only once all of them stand."""
    checkpoint = resume.checkpoint if resume is not None else None
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # cuda:N: its RNG state and streams are the current ones
    run_dir = plan_run_dir(cfg.run_dir, cfg.name, checkpoint)
    torch.manual_seed(cfg.seed)
    setup = _setup(cfg, device)

    # DSRL and EXPO step sub-envs one by one inside a chunk: in-process (synchronous) envs
    asynchronous = cfg.method not in CHUNK_METHODS
    envs = make_vector_env(setup.env_id, cfg.num_envs, setup.env_kwargs, asynchronous)
    counters = {"env_steps": 0, "episodes": 0, "updates": 0, "update_budget": 0.0, "seconds": 0.0}
    try:
        mdp = _make_mdp(cfg, setup, envs)
        learner = _make_learner(cfg, setup, mdp).to(device)
        online = ReplayBuffer(mdp.obs_dim, mdp.critic_action_dim, cfg.buffer_capacity, cfg.num_envs)
        running: dict[str, Any] | None = None
        history: list[dict[str, Any]] = []
        if resume is not None:
            with restoring(resume.checkpoint):
                state = resume.training_state()
                running = _restore(state, learner, online, counters)
            # the evals that led to the checkpoint: a resumed run reports the whole run
            history = recorded_history(resume.checkpoint, state)
        _hand_gripper_to_critic(cfg, mdp, learner, counters)
        mdp.episodes = counters["episodes"]
        mdp.seeds = seed_stream((cfg.seed + 1) * TRAIN_SEED_STRIDE + counters["episodes"])
    except BaseException:
        envs.close()
        raise
    # Everything above checked the settings, the base and the data: only now a folder.
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    logger = RunLogger(run_dir, enabled=True, resumed_at=resumed_in_place(run_dir, checkpoint))
    return Run(
        cfg,
        setup,
        envs,
        mdp,
        learner,
        online,
        counters,
        running,
        run_dir,
        logger,
        episodes=TrainingEpisodes(cfg.num_envs, running["plain"] if running else None),
        history=history,
        last_checkpoint=checkpoint,
        progress=tqdm(
            total=cfg.env_steps,
            initial=counters["env_steps"],
            desc=f"finetune {cfg.name}",
            unit="step",
        ),
        start_env_steps=counters["env_steps"],
        start_seconds=counters["seconds"],
    )


# ---- the loop ------------------------------------------------------------------------------------
def _train_loop(run: Run) -> None:
    """Act, store the transition, learn; log, evaluate and save on env-step boundaries; until
    the budget of env steps is spent."""
    cfg, mdp, learner, online, counters = run.cfg, run.mdp, run.learner, run.online, run.counters
    if counters["env_steps"] == 0 and cfg.eval_every:
        _evaluate(run, cfg.eval_episodes)  # the starting point: the base policy (or random)
    # a resumed run goes on with the episodes that were running (replayed), as if never
    # stopped; checkpoints saved before runs kept them start new ones
    state = mdp.restore(**run.running["mdp"]) if run.running else mdp.reset()
    update_metrics: dict[str, float] = {}
    while counters["env_steps"] < cfg.env_steps:
        # ---- act ----------------------------------------------------------------------------
        if counters["env_steps"] < cfg.warmup_steps:
            action = _warmup_action(cfg, state, mdp.action_dim, learner)
        else:
            action = learner.act(state, explore=True)
        step = mdp.step(action)
        try:
            online.add(
                state,
                step.critic_action,
                stored_reward(cfg, step),
                step.next_state,
                torch.as_tensor(step.terminated),
                torch.as_tensor(step.truncated),
            )
        except ValueError as err:
            raise RLDivergedError(_diverged(err, counters, run.last_checkpoint)) from err
        run.episodes.record(step)
        counters["episodes"] = mdp.episodes
        state = step.start_state
        before = counters["env_steps"]
        counters["env_steps"] += step.env_steps
        run.progress.update(step.env_steps)

        # ---- learn --------------------------------------------------------------------------
        if counters["env_steps"] >= cfg.warmup_steps:
            counters["update_budget"] += cfg.updates_per_step * cfg.num_envs  # agent steps
            agent = cfg.agent
            learner.scale_learning_rates(
                lr_factor(agent.lr_decay, counters["env_steps"], cfg.env_steps, agent.lr_floor)
            )
            while counters["update_budget"] >= 1:
                batch = sample_mixed(
                    online,
                    run.setup.demos,
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
                    raise RLDivergedError(_diverged(err, counters, run.last_checkpoint)) from err
                counters["updates"] += 1
                counters["update_budget"] -= 1

        # ---- log, evaluate, save ------------------------------------------------------------
        now = counters["env_steps"]
        if _crossed(before, now, cfg.log_every):
            seconds = time.perf_counter() - run.started
            row = {
                "episodes": counters["episodes"],
                "updates": counters["updates"],
                "env_steps_per_s": (now - run.start_env_steps) / seconds,
                **update_metrics,
                **run.episodes.summary(),  # training episodes (with exploration noise)
            }
            if "success_rate" in row:
                run.progress.set_postfix(success=f"{row['success_rate']:.0%}")
            run.logger.log(now, "train", row)
        if cfg.eval_every and _crossed(before, now, cfg.eval_every) and now < cfg.env_steps:
            _evaluate(run, cfg.eval_episodes)
        if _crossed(before, now, cfg.save_every) and now < cfg.env_steps:
            run.last_checkpoint = _save(run, {})


def _evaluate(run: Run, n_episodes: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate the current actor (a copy: eval never touches the learner; the averaged actor
    with ``agent.actor_ema``), add the row to the history and the log, and keep the actor as
    ``checkpoints/best`` when it beats every earlier eval."""
    cfg, counters = run.cfg, run.counters
    summary = evaluate(
        run.setup.env_id,
        _eval_agent(cfg, run.setup, run.learner, run.mdp),
        n_episodes=n_episodes,
        seed=cfg.eval_seed,
        num_envs=2,
        env_kwargs=run.setup.env_kwargs,
        out_dir=out_dir,
        video_episodes=cfg.video_episodes if out_dir else 0,
        progress=False,
    )
    row = {"env_steps": counters["env_steps"], **eval_metrics(summary)}
    earlier = best_eval(run.history)
    run.history.append(row)
    run.logger.log(counters["env_steps"], "eval", eval_metrics(summary))
    if earlier is None or eval_score(row) > eval_score(earlier):
        _save(run, eval_metrics(summary), best=True)
    best = best_eval(run.history)
    run.logger.log(counters["env_steps"], "best", _best_metrics(best))
    run.progress.write(f"[{counters['env_steps']} env steps] {summary_line(summary)}")
    if run.on_eval is not None:
        run.on_eval(counters["env_steps"], summary)
    return summary


# ---- the end -------------------------------------------------------------------------------------
def _finish(run: Run) -> dict[str, Any]:
    """The final eval (with videos, in ``eval-<env steps>/``) and the last checkpoint."""
    run.progress.close()
    out_dir = run.run_dir / f"eval-{run.counters['env_steps']:07d}"
    final = _evaluate(run, run.cfg.final_eval_episodes, out_dir)
    run.last_checkpoint = _save(run, eval_metrics(final))
    return final


def _best_metrics(best: dict[str, Any]) -> dict[str, Any]:
    """The best eval so far, as ``metrics.jsonl`` logs it beside each eval (``best/...``)."""
    return {"env_steps": best["env_steps"], "success_rate": best["success_rate"]} | {
        "mean_return": best["mean_return"],
        "n_episodes": best["n_episodes"],
    }


def _result(run: Run, final: dict[str, Any]) -> dict[str, Any]:
    """The plot of the evals, ``summary.json`` (the final and the best eval, where each
    checkpoint is) and what ``finetune`` returns, for the whole run."""
    seconds = run.counters["seconds"]
    # tasks that report info["is_success"] (the own tasks, robosuite) plot success, others return
    _plot(run.history, run.run_dir, run.cfg.name, has_success=final.get("success_signal", True))
    best = best_eval(run.history)
    atomic_write_json(
        run.run_dir / "summary.json",
        {
            "final": run.history[-1],
            "best": best,
            "checkpoint": str(run.last_checkpoint),
            "best_checkpoint": str(run.run_dir / "checkpoints" / BEST),
            "env_steps": run.counters["env_steps"],
            "minutes": None if seconds is None else seconds / 60,
        },
    )
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.last_checkpoint),
        "final": final,
        "best": best,
        "history": run.history,
        "minutes": None if seconds is None else seconds / 60,  # the whole run's
        "session_minutes": (time.perf_counter() - run.started) / 60,  # this process's
        "env_steps": run.counters["env_steps"],
        "start_env_steps": run.start_env_steps,  # 0, or where a resumed run went on
    }


def _resumed_config(cfg: FinetuneConfig, checkpoint: Path) -> FinetuneConfig:
    """The run's saved config with ``cfg``'s ``RESUMABLE`` settings; ``device`` ``auto`` keeps
    the saved device (a run saved before the option existed ran on the CPU, and resumes there),
    another moves the run (a GPU run can go on on a CPU)."""
    resumed = resumed_config(cfg, checkpoint, FinetuneConfig, RESUMABLE, section="finetune")
    if cfg.device == "auto":
        resumed.device = read_config(checkpoint)["finetune"].get("device", "cpu")
    return resumed


# ---- the method's pieces -------------------------------------------------------------------------
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
    if cfg.method == "expo":
        _expo_demos(cfg, setup, demos_path, base_path)
    return setup


def _expo_demos(cfg: FinetuneConfig, setup: Setup, demos_path: str | None, base_path) -> None:
    """EXPO's demonstrations: the base's imitation windows, and (``demo_fraction`` > 0) the
    critic's demo chunks. The base keeps learning by imitation, so it needs them."""
    from robopolicy.data.hdf5 import load_episodes
    from robopolicy.data.sequence import SequenceWindows

    if not demos_path:
        raise ConfigError(
            f"method expo trains its base by imitation on demos and online data, but neither "
            f"demos= nor the base's task ({base_path}) names a dataset: set demos=<file.hdf5>"
        )
    policy = setup.policy
    episodes = load_episodes(demos_path, keys=list(policy.shapes.obs))
    horizons = (policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
    setup.demo_windows = SequenceWindows(episodes, list(policy.shapes.obs), *horizons)
    if cfg.demo_fraction > 0:
        setup.demos = expo.demo_chunk_buffer(
            policy,
            episodes,
            setup.discrete_dims,
            cfg.reward_offset,
            per_env_step=cfg.dsrl_reward == "per_env_step",
        )


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
    if cfg.method == "expo":
        policy = setup.policy
        horizons = (policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
        limit = cfg.expo.imitation_obs_limit
        online = expo.OnlineEpisodes(
            list(policy.shapes.obs),
            horizons,
            cfg.expo.window_refresh,
            cfg.buffer_capacity,
            None if limit is None else expo.InRange(policy.normalizer, limit),
        )
        return expo.ExpoMDP(envs, seeds, expo.ExpoBase(policy, cfg.num_envs), online)
    return FlatMDP(envs, seeds, setup.obs_keys)


def _make_learner(cfg: FinetuneConfig, setup: Setup, mdp: MDP) -> Learner:
    if cfg.method == "expo":
        learner = expo.ExpoLearner(cfg.agent, cfg.expo, setup.policy, setup.discrete_dims)
        learner.imitation = expo.ImitationData(
            setup.demo_windows, mdp.online, cfg.expo.base_batch_size, cfg.expo.base_demo_fraction
        )
        return learner
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


def _warmup_action(
    cfg: FinetuneConfig, state: torch.Tensor, action_dim: int, learner
) -> torch.Tensor:
    """Residual: the base action plus small Gaussian noise; DSRL: the base's own N(0, I) noise
    (within the bound); EXPO: one sample of the base; scratch: uniform random actions."""
    if cfg.method == "expo":
        return learner.base_action(state)
    n = state.shape[0]
    scale = cfg.agent.action_scale
    if cfg.method.startswith("dsrl"):
        return torch.randn(n, action_dim).clamp(-scale, scale)
    if cfg.method == "residual":
        return (cfg.agent.explore_std * scale * torch.randn(n, action_dim)).clamp(-scale, scale)
    return scale * (2 * torch.rand(n, action_dim) - 1)


def stored_reward(cfg: FinetuneConfig, step: Step) -> torch.Tensor:
    """The reward the replay keeps: the env's plus ``reward_offset`` per executed env step
    (``dsrl_reward: per_env_step``, DSRL's reference) or once per agent step (``per_chunk``).
    One-step methods execute one env step per agent step: both forms agree there."""
    if cfg.dsrl_reward == "per_env_step":
        return step.reward + cfg.reward_offset * step.executed_steps()
    return step.reward + cfg.reward_offset


def _eval_agent(cfg: FinetuneConfig, setup: Setup, learner: Learner, mdp: MDP):
    if cfg.method == "expo":  # copies: eval never touches the learner
        return expo.ExpoAgent(
            copy.deepcopy(learner.policy),
            copy.deepcopy(learner.policy_actor()),
            copy.deepcopy(learner.critic),
            cfg.expo.num_samples,
        )
    actor = copy.deepcopy(learner.policy_actor()).eval()
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


# ---- bookkeeping ---------------------------------------------------------------------------------
def _crossed(before: int, now: int, every: int) -> bool:
    return every > 0 and before // every != now // every


def _diverged(err: Exception, counters: dict, last: Path | None) -> str:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
    return f"stopped at env step {counters['env_steps']}: {err}; {kept}"


def _save(run: Run, metrics: dict, best: bool = False) -> Path:
    """A checkpoint of everything now, with the run's clock brought up to date; with ``best``
    the policy alone (no training state) as ``checkpoints/best``, ``last`` left as it is."""
    cfg, setup, learner, counters = run.cfg, run.setup, run.learner, run.counters
    if run.start_seconds is not None:
        counters["seconds"] = run.start_seconds + time.perf_counter() - run.started
    gripper_critic = _gripper_critic(run.mdp)
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
    weights = {f"actor.{k}": v for k, v in learner.policy_actor().state_dict().items()}
    if gripper_critic is not None:
        weights.update({f"critic.{k}": v for k, v in gripper_critic.state_dict().items()})
    if cfg.method == "expo":  # one policy: the trained base (and its config), edit, critic
        weights = expo.checkpoint_weights(learner)
        base_config = read_config(setup.base_checkpoint)
        config.update(policy=base_config["policy"], shapes=base_config["shapes"])
    name = BEST if best else f"{counters['env_steps']:07d}"
    return save_checkpoint(
        run.run_dir / "checkpoints" / name,
        weights,
        config,
        step=counters["env_steps"],
        metrics=metrics,
        training_state=None if best else _training_state(run),
        point_last=not best,
    )


def _training_state(run: Run) -> dict[str, Any]:
    """Everything an exact resume needs, beside the policy's weights."""
    mdp_tensors, mdp_plain = run.mdp.state_dict()
    return {
        **run.learner.training_state(),
        "replay": run.online.state_dict(),
        "counters": run.counters,
        "history": run.history,  # the evals that led here: a resumed run reports the whole run
        "rng": train_state.rng_state(),
        "mdp_tensors": mdp_tensors,  # the running episodes, replayed on resume
        "mdp": mdp_plain,
        "episodes": run.episodes.state_dict(),  # the training episodes' statistics (logs)
    }


def _restore(
    state: dict[str, Any], learner: Learner, online: ReplayBuffer, counters: dict
) -> dict[str, Any] | None:
    """Load the training state; return the running episodes to go on with (``mdp``: the
    arguments of ``MDP.restore``; ``plain``: their statistics), or None for a checkpoint
    saved before runs kept them, whose episodes end here (every env starts a new one)."""
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
