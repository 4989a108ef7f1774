"""How a policy's chunks become executed actions: one config, one factory, used by eval, the
benchmarks and (later) the policy server.

- ``chunked``: plan, execute ``action_horizon`` actions, re-plan (Diffusion Policy's default;
  ``action_horizon: 1`` re-plans every step);
- ``ensemble``: re-plan every step and average the overlapping predictions (ACT);
- ``rti``: re-plan every step from the previous chunk with ``rti_start_step`` denoising steps.

``sampler`` and ``num_inference_steps`` override the checkpoint's inference sampler (RTI-DP
runs the trained DDPM chain, e.g. ``sampler: ddpm, num_inference_steps: 100``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robopolicy.inference.chunking import ChunkExecutor
from robopolicy.inference.ensemble import TemporalEnsembleExecutor
from robopolicy.inference.executor import Executor
from robopolicy.inference.rti import RTIExecutor

MODES = ("chunked", "ensemble", "rti")


@dataclass
class ExecutionConfig:
    mode: str = "chunked"  # chunked | ensemble | rti
    action_horizon: int | None = None  # chunked: actions per chunk (None: the policy's)
    sampler: str | None = None  # diffusion: ddim | ddpm (None: the checkpoint's)
    num_inference_steps: int | None = None  # None: the checkpoint's
    rti_start_step: int = 3  # K': denoising steps per control step
    warm_start_clip: float = 0.1  # RTI: |gripper| bound in the warm start
    rti_cold_start_steps: int | None = None  # RTI: DDIM (flow: Euler) steps of an episode's
    # first chunk (None: the full chain set by sampler / num_inference_steps)
    ensemble_decay: float = 0.01  # ACT's m in exp(-m i)
    discrete_dims: list[int] | None = None  # open/close dims (None: ask the env)


def make_executor(
    policy,
    batch_size: int,
    cfg: ExecutionConfig,
    discrete_dims: Sequence[int] = (),
    configure_policy: bool = True,
) -> Executor:
    """An executor for ``batch_size`` parallel episodes.

    With ``configure_policy`` it first sets the policy's sampler from ``cfg``. A server that
    shares one policy between connections configures it once and passes False afterwards:
    replacing the sampler while another thread samples with it would break that request.
    ``discrete_dims`` (usually the env's) applies unless ``cfg.discrete_dims`` is set.
    """
    if cfg.mode not in MODES:
        raise ValueError(f"execution.mode {cfg.mode!r} not in {MODES}")
    if configure_policy:
        policy.set_sampler(cfg.sampler, cfg.num_inference_steps)
    dims = list(cfg.discrete_dims) if cfg.discrete_dims is not None else list(discrete_dims)
    if cfg.mode == "chunked":
        return ChunkExecutor(policy, batch_size, dims, cfg.action_horizon)
    if cfg.mode == "ensemble":
        return TemporalEnsembleExecutor(policy, batch_size, dims, cfg.ensemble_decay)
    return RTIExecutor(
        policy, batch_size, dims, cfg.rti_start_step, cfg.warm_start_clip, cfg.rti_cold_start_steps
    )


def describe(cfg: ExecutionConfig, policy) -> str:
    """A short label such as ``ddim-10 chunked(8)`` or ``ddpm-100 rti(K'=3)``."""
    sampler = "flow" if policy.cfg.type == "flow" else (cfg.sampler or policy.cfg.sampler)
    head = f"{sampler}-{cfg.num_inference_steps or policy.num_inference_steps}"
    if cfg.mode == "chunked":
        return f"{head} chunked({cfg.action_horizon or policy.action_horizon})"
    if cfg.mode == "ensemble":
        return f"{head} ensemble(m={cfg.ensemble_decay:g})"
    cold = f", first chunk {cfg.rti_cold_start_steps} steps" if cfg.rti_cold_start_steps else ""
    return f"{head} rti(K'={cfg.rti_start_step}{cold})"
