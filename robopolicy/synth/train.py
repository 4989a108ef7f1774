"""``robopolicy synth train CONFIG``: fit the trajectory diffusion model to an offline dataset.

AdamW with a linear warm-up and cosine decay, an EMA of the weights (what is saved and
sampled), windows drawn uniformly, on ``device`` (the CPU by default; checkpoints load on the
CPU). After training, ``inspect_trajectories`` unguided samples are generated and compared with
the data (``inspect.json``: dynamics error, statistics).
``resume=`` continues from a checkpoint (raw weights, optimiser, schedule, EMA, step, RNG).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf
from tqdm import tqdm

from robopolicy.checkpoint import (
    load_strict,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    saved_config,
)
from robopolicy.config import to_dict
from robopolicy.device import resolve_device
from robopolicy.files import atomic_write_json, atomic_write_text
from robopolicy.runlog import RunLogger, make_run_dir
from robopolicy.synth.config import SynthConfig, require_dataset, validate_sampler
from robopolicy.synth.generate import generate, inspect_synthetic
from robopolicy.synth.model import TrajectoryModel
from robopolicy.synth.offline_data import OfflineData, load_offline_data
from robopolicy.synth.trajectories import RowLayout, make_windows
from robopolicy.training import state as train_state


def train_trajectory_model(cfg: SynthConfig) -> dict[str, Any]:
    resume_from = resolve_checkpoint(cfg.resume) if cfg.resume else None
    if resume_from is not None:
        cfg = saved_config(resume_from, "synth", SynthConfig, cfg.run_dir)
    require_dataset(cfg)
    validate_sampler(cfg.sampler)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    data = load_offline_data(cfg.dataset)
    windows = torch.as_tensor(make_windows(data, cfg.horizon, cfg.stride))
    layout = RowLayout(data.obs.shape[1], data.actions.shape[1])
    model = TrajectoryModel(layout, tuple(cfg.down_dims), cfg.kernel_size)
    if cfg.horizon % model.horizon_multiple:
        raise ValueError(
            f"horizon {cfg.horizon} must be a multiple of {model.horizon_multiple} for "
            f"down_dims {cfg.down_dims}"
        )
    model.normalizer.fit(windows)
    normalized = model.normalizer.normalize(windows).to(device)
    model.to(device)
    run_dir = make_run_dir(cfg.run_dir, cfg.name, resume_from)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=cfg.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    first = 1 + (_restore(resume_from, model, optimizer, schedule, ema) if resume_from else 0)
    ema.to(device)  # restored shadow weights load on the CPU
    logger = RunLogger(run_dir, enabled=True)
    start = time.perf_counter()
    checkpoint = resume_from
    progress = tqdm(
        range(first, cfg.steps + 1), initial=first - 1, total=cfg.steps, desc=f"synth {cfg.name}"
    )
    recent: list[float] = []
    final_loss: float | None = None  # the mean loss of the last logged (or unlogged) steps
    try:
        for step in progress:
            # indices from the CPU generator: the same windows, and resumes, on any device
            batch = normalized[torch.randint(0, len(normalized), (cfg.batch_size,)).to(device)]
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite EDM loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            ema.step(model.parameters())
            recent.append(loss.item())
            if step % cfg.log_every == 0:
                final_loss = sum(recent) / len(recent)
                logger.log(step, "train", {"loss": final_loss})
                progress.set_postfix(loss=f"{final_loss:.3f}")
                recent.clear()
            if step % cfg.save_every == 0 or step == cfg.steps:
                state = _training_state(model, optimizer, schedule, ema, step)
                checkpoint = _save(run_dir, cfg, _ema_copy(model, ema), data, step, state)
    finally:
        progress.close()
        logger.close()
    minutes = (time.perf_counter() - start) / 60
    if recent:
        final_loss = sum(recent) / len(recent)
    report: dict[str, Any] = {}
    if cfg.inspect_trajectories:
        trained = _ema_copy(model, ema).eval()
        raw = generate(trained, cfg.inspect_trajectories, cfg.sampler, seed=cfg.seed)
        report = inspect_synthetic(raw, trained, data)
        atomic_write_json(run_dir / "inspect.json", report)
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "windows": len(windows),
        "minutes": minutes,
        "final_loss": final_loss,
        "inspect": report,
    }


def _ema_copy(model: TrajectoryModel, ema: EMAModel) -> TrajectoryModel:
    """The model with the EMA weights (and the same normaliser): what is saved and sampled."""
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged


def _training_state(model, optimizer, schedule, ema: EMAModel, step: int) -> dict[str, Any]:
    opt_tensors, opt_groups = train_state.optimizer_state(optimizer)
    shadow, settings = train_state.ema_state(ema)
    return {
        "step": step,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": opt_tensors,
        "optimizer_param_groups": opt_groups,
        # LambdaLR's lambdas are code, not state: JSON keeps the counters, drops the functions
        "lr_schedule": json.loads(json.dumps(schedule.state_dict(), default=lambda v: None)),
        "ema_shadow": shadow,
        "ema": settings,
        "rng": train_state.rng_state(),
    }


def _restore(checkpoint: Path, model, optimizer, schedule, ema: EMAModel) -> int:
    state = load_training_state(checkpoint)
    load_strict(model, state["model"], f"{checkpoint}/training_state/model.safetensors")
    train_state.load_optimizer_state(
        optimizer, state.get("optimizer", {}), state["optimizer_param_groups"]
    )
    schedule.load_state_dict(state["lr_schedule"])
    train_state.load_ema_state(ema, state["ema_shadow"], state["ema"])
    train_state.load_rng_state(state["rng"])
    return int(state["step"])


def _save(
    run_dir: Path,
    cfg: SynthConfig,
    model: TrajectoryModel,
    data: OfflineData,
    step: int,
    training_state: dict[str, Any],
) -> Path:
    config = {
        "synth": to_dict(cfg),
        "trajectory_model": model.describe(),
        "task": {"env_id": data.env_id, "env_kwargs": data.env_kwargs},
    }
    return save_checkpoint(
        run_dir / "checkpoints" / f"{step:07d}",
        model.state_dict(),
        config,
        step=step,
        training_state=training_state,
    )
