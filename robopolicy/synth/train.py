"""``robopolicy synth train CONFIG``: fit the trajectory diffusion model to an offline dataset.

AdamW with a linear warm-up and cosine decay, an EMA of the weights (what is saved and
sampled), windows drawn uniformly. After training, ``inspect_trajectories`` unguided samples
are generated and compared with the data (``inspect.json``: dynamics error, statistics).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from omegaconf import OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from robopolicy.checkpoint import save_checkpoint
from robopolicy.config import to_dict
from robopolicy.files import atomic_write_json, atomic_write_text
from robopolicy.runlog import RunLogger, make_run_dir
from robopolicy.synth.config import SynthConfig, validate_sampler
from robopolicy.synth.generate import generate, inspect_synthetic
from robopolicy.synth.model import TrajectoryModel
from robopolicy.synth.offline_data import OfflineData, load_offline_data
from robopolicy.synth.trajectories import RowLayout, make_windows


def train_trajectory_model(cfg: SynthConfig) -> dict[str, Any]:
    validate_sampler(cfg.sampler)
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
    normalized = model.normalizer.normalize(windows)
    run_dir = make_run_dir(cfg.run_dir, cfg.name, None)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=cfg.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    logger = RunLogger(run_dir, enabled=True)
    start = time.perf_counter()
    progress = tqdm(range(1, cfg.steps + 1), desc=f"synth {cfg.name}", unit="step")
    recent: list[float] = []
    try:
        for step in progress:
            batch = normalized[torch.randint(0, len(normalized), (cfg.batch_size,))]
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite EDM loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            ema.update_parameters(model)
            recent.append(loss.item())
            if step % cfg.log_every == 0:
                logger.log(step, "train", {"loss": sum(recent) / len(recent)})
                progress.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
                recent.clear()
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpoint = _save(run_dir, cfg, ema.module, data, step, len(windows))
    finally:
        progress.close()
        logger.close()
    minutes = (time.perf_counter() - start) / 60
    report: dict[str, Any] = {}
    if cfg.inspect_trajectories:
        trained = ema.module.eval()
        raw = generate(trained, cfg.inspect_trajectories, cfg.sampler, seed=cfg.seed)
        report = inspect_synthetic(raw, trained, data)
        atomic_write_json(run_dir / "inspect.json", report)
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "windows": len(windows),
        "minutes": minutes,
        "inspect": report,
    }


def _save(
    run_dir: Path, cfg: SynthConfig, model: TrajectoryModel, data: OfflineData, step: int, n: int
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
        metrics={"windows": n},
    )
