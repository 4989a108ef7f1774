"""The ``robopolicy train`` config schema: task (env + dataset), policy, optimisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from robopolicy.config import ConfigError
from robopolicy.policies.config import PolicyConfig

OUT_OF_BOUNDS_ACTIONS = ("error", "clip")
# What a resume may change (``robopolicy train CONFIG resume=RUN key=value``): the length of
# training (it also stretches the cosine schedule from there on) and the loop's cadence (logs,
# evals and checkpoints never touch the training's arithmetic). The rest comes from the run.
RESUMABLE = ("optim.steps", "loop")


@dataclass
class TaskConfig:
    env_id: str = ""  # a gymnasium id; may be left out when env_from_dataset is set
    # A robomimic file (e.g. a published robomimic dataset) whose data.attrs["env_args"] makes
    # the env: the run resolves it into env_id and env_kwargs (task.env_kwargs win) and saves those.
    env_from_dataset: str | None = None
    dataset: str = MISSING  # robomimic-format HDF5 (robopolicy collect writes them)
    # The observations the policy reads, named (never "whatever the dataset has": a dataset that
    # lacks one must be refused, not trained on without it); each must be in the dataset and
    # in the env's observation space, with the same shape.
    obs_keys: list[str] = field(default_factory=list)
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"obs_type": "state"})
    filter_key: str | None = None  # a robomimic mask, e.g. "train"
    # Dataset actions outside the env's action bounds: error (refuse the dataset), or clip
    # (clip them into the bounds, with a warning that counts them).
    out_of_bounds_actions: str = "error"


@dataclass
class OptimConfig:
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    max_grad_norm: float = 0.0  # 0: no clipping
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default)


@dataclass
class LoopConfig:
    log_every: int = 100
    save_every: int = 1000  # also at the end
    eval_every: int = 0  # 0: evaluate only at the end
    eval_episodes: int = 20  # periodic evals
    final_eval_episodes: int = 50
    eval_num_envs: int = 2
    video_episodes: int = 2


@dataclass
class TrainConfig:
    name: str = "bc"
    run_dir: str | None = None  # default: runs/<name>/<timestamp>
    resume: str | None = None  # a run dir or checkpoint to continue (exactly) from
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def validate_train_config(cfg: TrainConfig, *, resumed: bool = False) -> None:
    """Refuse settings that would otherwise fail mid-run (``loop.save_every=0`` divides by
    zero after the first step) or quietly do nothing (``optim.steps=-5`` trains 0 steps).
    A resumed run goes on with the keys it was trained on: one saved before ``task.obs_keys``
    was required (empty: every key of its dataset) is not refused for it."""
    checks = [
        (cfg.optim.steps >= 1, f"optim.steps must be >= 1, got {cfg.optim.steps}"),
        (cfg.optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {cfg.optim.batch_size}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (
            cfg.optim.warmup_steps >= 0,
            f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}",
        ),
        (cfg.loop.log_every >= 1, f"loop.log_every must be >= 1, got {cfg.loop.log_every}"),
        (cfg.loop.save_every >= 1, f"loop.save_every must be >= 1, got {cfg.loop.save_every}"),
        (
            cfg.loop.eval_every >= 0,
            f"loop.eval_every must be >= 0 (0: only at the end), got {cfg.loop.eval_every}",
        ),
        (
            cfg.loop.eval_num_envs >= 1,
            f"loop.eval_num_envs must be >= 1, got {cfg.loop.eval_num_envs}",
        ),
        (
            cfg.loop.final_eval_episodes >= 0,
            f"loop.final_eval_episodes must be >= 0, got {cfg.loop.final_eval_episodes}",
        ),
        (
            bool(cfg.task.env_id or cfg.task.env_from_dataset),
            "task.env_id is not set: name the env (e.g. robosuite/Lift-v0) or set "
            "task.env_from_dataset=<file.hdf5>",
        ),
        (
            bool(cfg.task.obs_keys) or resumed,
            "task.obs_keys is empty: name the observations the policy reads (the task configs "
            "in configs/task/ do), so that a dataset lacking one is refused",
        ),
        (
            cfg.task.out_of_bounds_actions in OUT_OF_BOUNDS_ACTIONS,
            f"task.out_of_bounds_actions {cfg.task.out_of_bounds_actions!r} not in "
            f"{OUT_OF_BOUNDS_ACTIONS}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
