"""Benchmarks that need a trained checkpoint and were not given one train it here."""

from __future__ import annotations

from pathlib import Path

from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig


def train_checkpoint(
    name: str,
    train_config: str | None,
    collect_config: str | None,
    run_dir: Path,
    train_overrides: list[str] | None = None,
    collect_overrides: list[str] | None = None,
) -> str:
    """Train ``configs/<train_config>`` into ``run_dir`` (collecting its dataset with
    ``configs/<collect_config>`` if missing) and return the final checkpoint; the overrides
    let a suite train a small checkpoint of its own (with ``task.dataset`` in its run folder,
    so a few demos never stand in for the shared dataset)."""
    if train_config is None:
        raise ValueError(f"benchmark task {name!r} needs a checkpoint or a train_config")
    train_cfg = load_config(
        CONFIG_DIR / train_config,
        TrainConfig,
        [f"run_dir={run_dir}", "loop.final_eval_episodes=0", *(train_overrides or [])],
    )
    if not Path(train_cfg.task.dataset).exists():
        if collect_config is None:
            raise ValueError(
                f"dataset {train_cfg.task.dataset} is missing and benchmark task {name!r} "
                "has no collect_config"
            )
        overrides = [f"output={train_cfg.task.dataset}", *(collect_overrides or [])]
        collect(load_config(CONFIG_DIR / collect_config, CollectConfig, overrides))
    return train_bc(train_cfg)["checkpoint"]
