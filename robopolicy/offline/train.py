"""``robopolicy offline CONFIG``: TD3+BC or IQL on an offline dataset, optionally mixed with
synthetic experience from a trajectory diffusion model (policy-guided diffusion).

With ``synthetic.model`` set, each batch takes ``synthetic.fraction`` of its transitions from a
synthetic pool (PGD: 240 of 256) and the rest from the real data. The first pool is unguided;
every ``regenerate_every`` agent steps the pool is regenerated, guided by the current agent
with coefficient ``synthetic.guidance`` (0 keeps every pool unguided: the "unguided" arm).
Eval reports the mean return and, with the dataset's references, D4RL's normalised score.
``resume=`` continues from a checkpoint: learner, optimisers, step and RNG are restored; the
synthetic pool is regenerated from the restored agent (it is not saved: it is a function of
the model and the agent).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from robopolicy.checkpoint import (
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    saved_config,
)
from robopolicy.config import to_dict
from robopolicy.device import resolve_device
from robopolicy.files import atomic_save_figure, atomic_write_text
from robopolicy.offline.agents import OfflineAgent
from robopolicy.offline.config import OfflineConfig, validate_offline_config
from robopolicy.rl.actors import FlatObsAgent
from robopolicy.runlog import RunLogger, make_run_dir
from robopolicy.sim.evaluate import evaluate
from robopolicy.synth.dynamics import relabel_with_simulator, simulate
from robopolicy.synth.generate import generate, mean_log_likelihood
from robopolicy.synth.model import load_trajectory_model
from robopolicy.synth.offline_data import OfflineData, load_offline_data, normalized_return
from robopolicy.synth.pool import TransitionPool, sample_real_and_synthetic, to_transitions
from robopolicy.training import state as train_state


def train_offline(cfg: OfflineConfig) -> dict[str, Any]:
    resume_from = resolve_checkpoint(cfg.resume) if cfg.resume else None
    if resume_from is not None:
        cfg = saved_config(resume_from, "offline", OfflineConfig, cfg.run_dir)
    validate_offline_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    data = load_offline_data(cfg.dataset)
    real = TransitionPool(_real_transitions(data))
    model = None
    if cfg.synthetic.model:
        model, _ = load_trajectory_model(cfg.synthetic.model)
        model.to(resolve_device(cfg.synthetic.device, "synthetic.device"))
        dims = (real.obs.shape[1], real.actions.shape[1])
        if (model.layout.obs_dim, model.layout.action_dim) != dims:
            raise ValueError(
                f"trajectory model {cfg.synthetic.model} has obs/action dims "
                f"{model.layout.obs_dim}/{model.layout.action_dim}, dataset {cfg.dataset} has "
                f"{real.obs.shape[1]}/{real.actions.shape[1]}"
            )
    if (
        cfg.synthetic.relabel_with_simulator
        and simulate(data.env_id, data.env_kwargs, data.obs[:1], data.actions[:1]) is None
    ):
        raise ValueError(
            f"synthetic.relabel_with_simulator: {data.env_id}'s simulator state cannot be "
            "rebuilt from its observations (gymnasium MuJoCo tasks only)"
        )
    agent = OfflineAgent(
        cfg.agent,
        real.obs.shape[1],
        real.actions.shape[1],
        real.obs.mean(dim=0),
        real.obs.std(dim=0).clamp_min(1e-3),
    )
    start_step = 0
    if resume_from is not None:
        state = load_training_state(resume_from)
        agent.learner.load_training_state(state)
        train_state.load_rng_state(state["rng"])
        start_step = int(state["counters"]["step"])
    run_dir = make_run_dir(cfg.run_dir, cfg.name, resume_from)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    logger = RunLogger(run_dir, enabled=True)
    history: list[dict[str, Any]] = []
    synthetic: TransitionPool | None = None
    synth_stats: dict[str, float] = {}
    start = time.perf_counter()
    generation_seconds = 0.0

    def evaluate_now(step: int, episodes: int) -> dict[str, Any]:
        actor = copy.deepcopy(agent).eval()
        summary = evaluate(
            data.env_id,
            FlatObsAgent(actor, data.obs_keys, name=cfg.agent.algo),
            n_episodes=episodes,
            seed=cfg.eval_seed,
            num_envs=2,
            env_kwargs=data.env_kwargs,
            progress=False,
        )
        row = {
            "step": step,
            "mean_return": summary["mean_return"],
            "normalized_return": _float(normalized_return(summary["mean_return"], data.references)),
            **synth_stats,
        }
        history.append(row)
        logger.log(step, "eval", {k: v for k, v in row.items() if k != "step"})
        progress.write(
            f"[{step} updates] return {row['mean_return']:.1f}"
            + (f" (normalised {row['normalized_return']:.1f})" if data.references else "")
        )
        return row

    progress = tqdm(total=cfg.steps, initial=start_step, desc=f"offline {cfg.name}", unit="update")
    metrics: dict[str, float] = {}
    try:
        for step in range(start_step, cfg.steps):
            due = step % cfg.synthetic.regenerate_every == 0 or step == start_step
            if model is not None and due:
                guided = step > 0 and cfg.synthetic.guidance > 0
                began = time.perf_counter()
                raw = generate(
                    model,
                    cfg.synthetic.trajectories,
                    cfg.synthetic.sampler,
                    policy=agent if guided else None,
                    guidance=cfg.synthetic.guidance if guided else 0.0,
                    seed=cfg.seed * 1000 + step // cfg.synthetic.regenerate_every,
                )
                transitions = to_transitions(raw, model.layout)
                if cfg.synthetic.relabel_with_simulator:
                    transitions = relabel_with_simulator(data.env_id, data.env_kwargs, transitions)
                synthetic = TransitionPool(transitions)
                generation_seconds += time.perf_counter() - began
                synth_stats = {
                    "synthetic_transitions": float(len(synthetic)),
                    "synthetic_guided": float(guided),
                    "synthetic_log_likelihood": mean_log_likelihood(agent, transitions),
                    "real_log_likelihood": mean_log_likelihood(agent, _subset(real, 4096)),
                }
                logger.log(step, "synthetic", synth_stats)
            batch = sample_real_and_synthetic(
                real, synthetic, cfg.agent.batch_size, cfg.synthetic.fraction, cfg.agent.gamma
            )
            metrics = agent.update(batch)
            done = step + 1
            progress.update(1)
            if done % cfg.log_every == 0:
                logger.log(done, "train", metrics)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                evaluate_now(done, cfg.eval_episodes)
            if done % cfg.save_every == 0 and done < cfg.steps:
                _save(run_dir, cfg, agent, data, done, {})
        final = evaluate_now(cfg.steps, cfg.final_eval_episodes)
        checkpoint = _save(run_dir, cfg, agent, data, cfg.steps, final)
    finally:
        progress.close()
        logger.close()
    _plot(history, run_dir, cfg.name, data.references is not None)
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "final": final,
        "history": history,
        "minutes": (time.perf_counter() - start) / 60,
        "generation_minutes": generation_seconds / 60,
    }


def _real_transitions(data: OfflineData) -> dict[str, torch.Tensor]:
    tensors = data.tensors()
    return {k: tensors[k] for k in ("obs", "actions", "rewards", "next_obs", "terminals")}


def _subset(pool: TransitionPool, n: int) -> dict[str, torch.Tensor]:
    idx = torch.randperm(len(pool))[:n]
    return {"obs": pool.obs[idx], "actions": pool.actions[idx]}


def _float(value) -> float | None:
    return None if value is None else float(value)


def _save(
    run_dir: Path, cfg: OfflineConfig, agent: OfflineAgent, data: OfflineData, step: int, metrics
) -> Path:
    config = {
        "offline": to_dict(cfg),
        "task": {"env_id": data.env_id, "env_kwargs": data.env_kwargs},
        "offline_agent": {
            "obs_dim": agent.obs_mean.shape[0],
            "action_dim": agent.action_dim,
            "obs_keys": data.obs_keys,
        },
    }
    training_state = {
        **agent.learner.training_state(),
        "counters": {"step": step},
        "rng": train_state.rng_state(),
    }
    return save_checkpoint(
        run_dir / "checkpoints" / f"{step:07d}",
        agent.policy_modules(),
        config,
        step=step,
        metrics=metrics,
        training_state=training_state,
    )


def _plot(history: list[dict[str, Any]], run_dir: Path, title: str, normalized: bool) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "normalized_return" if normalized else "mean_return"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([row["step"] for row in history], [row[key] for row in history], marker="o")
    ax.set(xlabel="agent updates", ylabel=key.replace("_", " "), title=title)
    fig.tight_layout()
    atomic_save_figure(fig, run_dir / "return.png", dpi=100)
    plt.close(fig)
