"""Behavior cloning: ``robopolicy train CONFIG [key=value ...]``.

Reads robomimic-format demonstrations into in-memory windows, fits the normaliser, and trains a
diffusion or flow policy with AdamW, a cosine schedule with warm-up and an EMA of the weights
(the EMA weights are what is evaluated and saved as ``model.safetensors``). Logs to
``metrics.jsonl`` and TensorBoard, evaluates periodically in simulation, and checkpoints in the
DESIGN format with everything an exact resume needs; a resume goes on with the run's saved
config (``RESUMABLE`` lists what it may change). A non-finite loss stops training with a
message naming the last good checkpoint, which stays untouched.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from robopolicy.checkpoint import (
    load_strict,
    load_training_state,
    resolve_checkpoint,
    restoring,
    save_checkpoint,
)
from robopolicy.config import ConfigError, to_dict
from robopolicy.data.action_bounds import find_out_of_bounds_actions
from robopolicy.data.hdf5 import DatasetError, dataset_info, read_env_args
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.prefetch import PrefetchedBatches
from robopolicy.data.sequence import RandomBatches, SequenceWindows
from robopolicy.device import resolve_device
from robopolicy.files import atomic_write_text
from robopolicy.policies import PolicyShapes, make_policy
from robopolicy.resume import resumed_config
from robopolicy.runlog import RunLogger, eval_metrics, plan_run_dir, resumed_in_place
from robopolicy.sim.agents import PolicyAgent
from robopolicy.sim.env_args import dataset_env_id, resolve_env
from robopolicy.sim.evaluate import evaluate, summary_line
from robopolicy.sim.vector import EnvUnavailableError, make_env
from robopolicy.training import state as train_state
from robopolicy.training.config import RESUMABLE, TrainConfig, validate_train_config
from robopolicy.training.distributed import (
    init_distributed,
    max_replica_difference,
    shutdown_distributed,
)

IMAGE_NDIM = 3


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def train_bc(
    cfg: TrainConfig, on_eval: Callable[[int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train (or resume) a BC policy; return the final evaluation summary and paths.
    ``on_eval(step, summary)`` hears of every eval as it is made (a sweep reports them to its
    scheduler, which may stop the run early)."""
    resume_from = resolve_checkpoint(cfg.resume) if cfg.resume else None
    if resume_from is not None:  # the run's own settings, threads included: an exact resume
        cfg = resumed_config(cfg, resume_from, TrainConfig, RESUMABLE, derived=("shapes",))
    validate_train_config(cfg, resumed=resume_from is not None)
    device = resolve_device(cfg.optim.device, "optim.device")
    if cfg.optim.num_threads > 0:
        torch.set_num_threads(cfg.optim.num_threads)
    dist_info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    cfg.task.env_id, cfg.task.env_kwargs = resolve_env(
        cfg.task.env_id, cfg.task.env_kwargs, cfg.task.env_from_dataset
    )
    run_dir = plan_run_dir(cfg.run_dir, cfg.name, resume_from)

    torch.manual_seed(cfg.optim.seed)  # identical initial weights on every rank
    windows, shapes = _load_data(cfg)
    normalizer = Normalizer.fit(windows.normalizer_data(), mode=cfg.policy.normalizer_mode)
    policy = make_policy(cfg.policy, shapes, normalizer).to(device)
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    lr_schedule = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=cfg.optim.warmup_steps,
        num_training_steps=cfg.optim.steps,
    )
    ema = (
        EMAModel(
            policy.parameters(),
            decay=cfg.optim.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=cfg.optim.ema_power,
        )
        if cfg.optim.ema
        else None
    )
    torch.manual_seed(cfg.optim.seed + dist_info.rank)
    generator = torch.Generator().manual_seed(cfg.optim.seed + dist_info.rank)
    batches: RandomBatches | PrefetchedBatches = RandomBatches(
        windows, cfg.optim.batch_size, generator=generator
    )
    if device.type == "cuda":  # on a CPU the gather is ~1% of a step: a thread would only compete
        batches = PrefetchedBatches(batches, pin_memory=True)
    step = 0
    if resume_from is not None:
        with restoring(resume_from):
            step = _restore(resume_from, policy, optimizer, lr_schedule, ema, batches)
        if dist_info.rank > 0:
            # The checkpoint holds rank 0's batch order and random state only: the other ranks
            # continue on streams of their own (seeded by rank and step), so they do not
            # duplicate rank 0's batches. Exact resume is rank 0's (and a single process's).
            _reseed_rank(cfg.optim.seed, dist_info.rank, step, batches)
    model = DistributedDataParallel(policy) if dist_info.enabled else policy
    eval_policy = copy.deepcopy(policy).eval()

    full_config = {**to_dict(cfg), "shapes": to_dict(OmegaConf.structured(shapes))}
    # Everything above checked the data and the settings: only now does the run get a folder.
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(
        run_dir, enabled=dist_info.is_main, resumed_at=resumed_in_place(run_dir, resume_from)
    )
    if dist_info.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(full_config)))
    last_good: Path | None = resume_from

    def save(metrics: dict[str, Any]) -> Path:
        _sync_eval_policy(eval_policy, policy, ema)
        training_state = _training_state(policy, optimizer, lr_schedule, ema, batches, step)
        return save_checkpoint(
            run_dir / "checkpoints" / f"{step:07d}",
            eval_policy.state_dict(),
            full_config,
            step=step,
            metrics=metrics,
            training_state=training_state,
        )

    def run_eval(n_episodes: int, out_dir: Path | None) -> dict[str, Any]:
        _sync_eval_policy(eval_policy, policy, ema)
        with _preserved_rng():  # evaluation must not change the training's random stream
            return evaluate(
                cfg.task.env_id,
                PolicyAgent(eval_policy, name=f"{cfg.policy.type}-{cfg.policy.backbone}"),
                n_episodes=n_episodes,
                num_envs=cfg.loop.eval_num_envs,
                env_kwargs=to_dict(cfg.task.env_kwargs),  # nested, e.g. a controller config
                out_dir=out_dir,
                video_episodes=cfg.loop.video_episodes if out_dir else 0,
                progress=False,
            )

    policy.train()
    timer = _StepTimer()
    bar = tqdm(
        total=cfg.optim.steps, initial=step, desc=f"train {cfg.name}", disable=not dist_info.is_main
    )
    batch_iter = iter(batches)
    last_metrics: dict[str, Any] = {}
    try:
        while step < cfg.optim.steps:
            timer.start()
            batch = _to_device(next(batch_iter), device)
            timer.data_ready()
            loss = model(batch)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at step {step + 1}; stopped. Last good checkpoint: "
                    f"{last_good or 'none yet'} (left untouched). Try a lower optim.lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(policy.parameters())
            step += 1
            timer.done(loss.item(), cfg.optim.batch_size)
            bar.update(1)
            if step % cfg.loop.log_every == 0 or step == cfg.optim.steps:
                last_metrics = timer.summary() | {"lr": lr_schedule.get_last_lr()[0]}
                logger.log(step, "train", last_metrics)
                bar.set_postfix(loss=f"{last_metrics['loss']:.4f}")
            if (
                dist_info.is_main
                and cfg.loop.eval_every
                and step % cfg.loop.eval_every == 0
                and step < cfg.optim.steps
            ):
                summary = run_eval(cfg.loop.eval_episodes, None)
                logger.log(step, "eval", eval_metrics(summary))
                if on_eval is not None:
                    on_eval(step, summary)
                policy.train()
            if dist_info.is_main and (step % cfg.loop.save_every == 0 or step == cfg.optim.steps):
                last_good = save(last_metrics)
    finally:
        batches.close()  # stop the prefetch thread, also when training stops on an error
    bar.close()
    if dist_info.enabled:
        logger.log(
            step,
            "ddp",
            {"max_weight_diff": max_replica_difference(policy), "world_size": dist_info.world_size},
        )

    result: dict[str, Any] = {"run_dir": str(run_dir), "steps": step}
    if dist_info.is_main:
        result["checkpoint"] = str(last_good)
        result["train"] = last_metrics
        if cfg.loop.final_eval_episodes > 0:
            summary = run_eval(cfg.loop.final_eval_episodes, run_dir / "eval")
            logger.log(step, "eval", eval_metrics(summary))
            result["eval"] = summary
            if on_eval is not None:
                on_eval(step, summary)
            print(summary_line(summary))
    logger.close()
    shutdown_distributed(dist_info)
    return result


# ---- data -----------------------------------------------------------------------------------
def _load_data(cfg: TrainConfig) -> tuple[SequenceWindows, PolicyShapes]:
    """Windows of the dataset, and the shapes it fixes, checked against the env."""
    info = dataset_info(cfg.task.dataset)
    dataset_env = dataset_env_id(cfg.task.dataset, read_env_args(cfg.task.dataset))
    if dataset_env != cfg.task.env_id:
        raise ConfigError(
            f"{cfg.task.dataset} was recorded on {dataset_env}, not task.env_id={cfg.task.env_id}"
        )
    obs_keys = list(cfg.task.obs_keys) or sorted(info["obs"])  # empty: a run saved before
    # task.obs_keys was required, resumed as it was trained
    unknown = sorted(set(obs_keys) - set(info["obs"]))
    if unknown:
        raise ConfigError(
            f"task.obs_keys {unknown} are not in {cfg.task.dataset}; it has {sorted(info['obs'])}"
        )
    try:
        env = make_env(cfg.task.env_id, **cfg.task.env_kwargs)
    except EnvUnavailableError as err:
        raise DatasetError(f"{cfg.task.dataset}: data.attrs['env_args'] names {err}") from err
    except ValueError as err:
        if not cfg.task.env_from_dataset:
            raise
        # the env's name and kwargs came from the file (an env or controller robosuite lacks)
        where = f"{cfg.task.env_from_dataset}: data.attrs['env_args']"
        raise DatasetError(f"{where}: {err}") from err
    try:
        spaces = env.observation_space
        for key in obs_keys:
            data_shape = tuple(info["obs"][key]["shape"])
            if key not in spaces.spaces:
                raise ConfigError(
                    f"{cfg.task.dataset}: key {key!r} is not an observation of "
                    f"{cfg.task.env_id} with env_kwargs {dict(cfg.task.env_kwargs)}; the env "
                    f"gives {sorted(spaces.spaces)}"
                )
            if tuple(spaces[key].shape) != data_shape:
                raise ConfigError(
                    f"{cfg.task.dataset}: {key!r} has shape {data_shape} but {cfg.task.env_id} "
                    f"gives {tuple(spaces[key].shape)} (check task.env_kwargs, e.g. image_size)"
                )
        if env.action_space.shape[0] != info["action_dim"]:
            raise ConfigError(
                f"{cfg.task.dataset}: actions have {info['action_dim']} dims but "
                f"{cfg.task.env_id} takes {env.action_space.shape[0]}"
            )
        control_hz = float(env.unwrapped.control_hz)
        low, high = env.action_space.low, env.action_space.high
    finally:
        env.close()
    clip = _check_action_bounds(cfg, low, high)
    windows = SequenceWindows.from_hdf5(
        cfg.task.dataset,
        obs_keys,
        obs_horizon=cfg.policy.obs_horizon,
        pred_horizon=cfg.policy.pred_horizon,
        action_horizon=cfg.policy.action_horizon,
        filter_key=cfg.task.filter_key,
    )
    if clip:
        windows.actions.clamp_(torch.as_tensor(low), torch.as_tensor(high))
    shapes = PolicyShapes(
        obs={k: list(info["obs"][k]["shape"]) for k in obs_keys},
        action_dim=int(info["action_dim"]),
        control_hz=control_hz,
    )
    return windows, shapes


def _check_action_bounds(cfg: TrainConfig, low, high) -> bool:
    """Whether the dataset's actions must be clipped into the env's bounds; refuses them
    (``task.out_of_bounds_actions=error``, and always for NaN or infinite values) instead."""
    bad = find_out_of_bounds_actions(cfg.task.dataset, low, high, cfg.task.filter_key)
    if bad is None:
        return False
    if cfg.task.out_of_bounds_actions == "error" or bad.nonfinite:
        fix = "" if bad.nonfinite else ", or set task.out_of_bounds_actions=clip"
        raise DatasetError(f"{bad.describe()}; fix the dataset{fix}")
    message = f"{bad.describe()}; clipped into the bounds (task.out_of_bounds_actions=clip)"
    warnings.warn(message, stacklevel=2)
    return True


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {
        "obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
        "actions": batch["actions"].to(device, non_blocking=True),
    }


# ---- state ----------------------------------------------------------------------------------
def _sync_eval_policy(eval_policy, policy, ema) -> None:
    eval_policy.load_state_dict(policy.state_dict())
    if ema is not None:
        ema.copy_to(eval_policy.parameters())
    eval_policy.eval()


def _training_state(policy, optimizer, lr_schedule, ema, batches, step: int) -> dict[str, Any]:
    opt_tensors, opt_groups = train_state.optimizer_state(optimizer)
    state: dict[str, Any] = {
        "step": step,
        "model": {k: v.detach().clone() for k, v in policy.state_dict().items()},
        "optimizer": opt_tensors,
        "optimizer_param_groups": opt_groups,
        "lr_schedule": _json_safe(lr_schedule.state_dict()),
        "rng": train_state.rng_state(),
    }
    batches_state = batches.state_dict()
    state["batches_generator"] = {"state": batches_state.pop("generator_state")}
    state["batches"] = batches_state
    if ema is not None:
        shadow, settings = train_state.ema_state(ema)
        state["ema_shadow"] = shadow
        state["ema"] = settings
    return state


def _restore(checkpoint: Path, policy, optimizer, lr_schedule, ema, batches) -> int:
    state = load_training_state(checkpoint)
    load_strict(policy, state["model"], f"{checkpoint}/training_state/model.safetensors")
    train_state.load_optimizer_state(
        optimizer, state.get("optimizer", {}), state["optimizer_param_groups"]
    )
    lr_schedule.load_state_dict(state["lr_schedule"])
    if ema is not None:
        train_state.load_ema_state(ema, state["ema_shadow"], state["ema"])
    batches.load_state_dict(
        {**state["batches"], "generator_state": state["batches_generator"]["state"]}
    )
    train_state.load_rng_state(state["rng"])
    return int(state["step"])


def _reseed_rank(seed: int, rank: int, step: int, batches) -> None:
    stream = seed + rank + 1_000_003 * step
    torch.manual_seed(stream)
    generator = torch.Generator().manual_seed(stream)
    state = batches.state_dict()
    batches.load_state_dict({**state, "generator_state": generator.get_state(), "position": 0})


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: None))


@contextlib.contextmanager
def _preserved_rng():
    saved = train_state.rng_state()
    try:
        yield
    finally:
        train_state.load_rng_state(saved)


# ---- logging --------------------------------------------------------------------------------
class _StepTimer:
    """Loss and speed since the last summary; the share of step time spent waiting for data."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.data_seconds = 0.0
        self.total_seconds = 0.0
        self.samples = 0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def data_ready(self) -> None:
        self._t1 = time.perf_counter()

    def done(self, loss: float, batch_size: int) -> None:
        now = time.perf_counter()
        self.data_seconds += self._t1 - self._t0
        self.total_seconds += now - self._t0
        self.samples += batch_size
        self.losses.append(loss)

    def summary(self) -> dict[str, float]:
        out = {
            "loss": sum(self.losses) / max(len(self.losses), 1),
            "samples_per_s": self.samples / max(self.total_seconds, 1e-9),
            "data_wait_share": self.data_seconds / max(self.total_seconds, 1e-9),
        }
        self._reset()
        return out
