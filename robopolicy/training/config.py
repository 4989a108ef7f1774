"""The ``robopolicy train`` config schema: task (env + dataset), policy, optimisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from robopolicy.policies.config import PolicyConfig

# What a resume may change (``robopolicy train CONFIG resume=RUN key=value``): the length of
# training (it also stretches the cosine schedule from there on) and the loop's cadence (logs,
# evals and checkpoints never touch the training's arithmetic). The rest comes from the run.
RESUMABLE = ("optim.steps", "loop")


@dataclass
class TaskConfig:
    env_id: str = MISSING
    dataset: str = MISSING  # robomimic-format HDF5 (robopolicy collect writes them)
    obs_keys: list[str] = field(default_factory=list)  # empty: every obs key of the dataset
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"obs_type": "state"})
    filter_key: str | None = None  # a robomimic mask, e.g. "train"


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
