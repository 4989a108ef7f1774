"""Kill-and-resume exactness: is a run that was killed and resumed the run that never stopped?

Each check starts a tiny run in a subprocess, kills it with SIGKILL as soon as its first
checkpoint is on disk (mid-run: mid-step, maybe mid-write of the next checkpoint), resumes it
the way the README shows (``resume=<run dir>``, no other setting repeated), trains an
uninterrupted twin with the same command, and compares every tensor of the two final
checkpoints: the weights, the normaliser, and the whole training state (optimiser moments,
EMA, RNG states, replay buffer, the running episodes). Exact means ``max_abs_diff == 0``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from safetensors.torch import load_file

import robopolicy
from robopolicy.checkpoint import saved_steps
from robopolicy.config import CONFIG_DIR
from robopolicy.rl.config import CHUNK_METHODS

PACKAGE_ROOT = Path(robopolicy.__file__).resolve().parent.parent
TINY_BC = [
    "policy.pred_horizon=8",
    "policy.action_horizon=4",
    "policy.num_inference_steps=4",
    "policy.num_train_timesteps=20",
    "policy.down_dims=[16,32]",
    "policy.time_embed_dim=16",
    "optim.batch_size=16",
    "optim.warmup_steps=5",
    "optim.num_threads=1",  # the resume must restore it from the checkpoint
    "loop.log_every=4",
    "loop.final_eval_episodes=0",
]


def bc_resume_exactness(
    work_dir: str | Path,
    dataset: str,
    *,
    steps: int = 48,
    save_every: int = 8,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Kill -9 a tiny BC run (``configs/train/lift_diffusion.yaml`` on ``dataset``, a Lift
    HDF5) after its first checkpoint, resume it, and compare it with an uninterrupted twin.

    Returns ``max_abs_diff`` over every tensor of the final checkpoints, ``tensors`` (how
    many were compared), ``steps``, ``killed_at`` (the newest checkpoint at the kill),
    ``duplicate_log_rows`` (train rows of ``metrics.jsonl`` logged twice for a step) and
    ``seconds``."""
    work_dir = Path(work_dir)
    config = str(CONFIG_DIR / "train" / "lift_diffusion.yaml")
    overrides = [
        f"task.dataset={dataset}",
        *TINY_BC,
        f"optim.steps={steps}",
        f"loop.save_every={save_every}",
    ]
    return _kill_and_resume(
        work_dir, ["train", config], overrides, steps, save_every, "train/loss", timeout_s
    )


def rl_resume_exactness(
    work_dir: str | Path,
    *,
    method: str = "scratch",
    base: str | None = None,
    env_id: str = "robopolicy/Lift-v0",
    env_steps: int = 160,
    save_every: int = 40,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Kill -9 a tiny ``robopolicy finetune`` run (``method`` on ``env_id``; ``base``: the BC
    checkpoint that residual, DSRL and EXPO start from) after its first checkpoint, which
    falls inside running episodes, resume it, and compare it with an uninterrupted twin.

    Returns what ``bc_resume_exactness`` returns, for the RL run (replay buffer, learner,
    optimisers, RNG and the running episodes included)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "name": f"exactness_{method}",
        "method": method,
        "env_steps": env_steps,
        "num_envs": 2,
        "warmup_steps": save_every // 2,
        "critic_warmup_updates": 4,
        "eval_every": 0,
        "final_eval_episodes": 1,
        "video_episodes": 0,
        "save_every": save_every,
        "log_every": save_every // 2,
        "num_threads": 1,
        "device": "cpu",
        "buffer_capacity": 10 * env_steps,
        "agent": {"hidden_dim": 16, "critic_heads": 2, "batch_size": 8},
    }
    if method == "scratch":
        settings |= {"env_id": env_id, "env_kwargs": {"obs_type": "state"}, "demo_fraction": 0.0}
    else:
        settings |= {"base": str(base), "demo_fraction": 0.0}
    if method in CHUNK_METHODS:  # built on SAC
        settings["agent"]["algo"] = "sac"
    if method == "expo":  # its base learns from demos (the base's dataset) and online episodes
        settings |= {"demo_fraction": 0.5}
        settings["expo"] = {"num_samples": 2, "base_batch_size": 8, "window_refresh": 20}
    config = work_dir / "finetune.yaml"
    OmegaConf.save(OmegaConf.create(settings), config)
    return _kill_and_resume(
        work_dir, ["finetune", str(config)], [], env_steps, save_every, "train/", timeout_s
    )


def _kill_and_resume(
    work_dir: Path,
    command: list[str],
    overrides: list[str],
    steps: int,
    save_every: int,
    log_key: str,
    timeout_s: float,
) -> dict[str, Any]:
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    twin_dir, killed_dir = work_dir / "uninterrupted", work_dir / "killed"
    twin = _start([*command, *overrides, f"run_dir={twin_dir}"], work_dir / "uninterrupted.log")
    killed = _start([*command, *overrides, f"run_dir={killed_dir}"], work_dir / "killed.log")
    try:
        killed_at = _kill_after_first_checkpoint(killed, killed_dir, save_every, timeout_s)
        if killed_at >= steps:
            raise RuntimeError(
                f"the run reached its last checkpoint ({steps}) before the kill: make it longer"
            )
        resumed = _start([*command, f"resume={killed_dir}"], work_dir / "resumed.log")
        for name, proc in (("uninterrupted", twin), ("resumed", resumed)):
            if proc.wait(timeout=timeout_s) != 0:
                raise RuntimeError(f"the {name} run failed: see {work_dir / name}.log")
    finally:
        for proc in (twin, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = f"checkpoints/{steps:07d}"
    diff, count = _compare(twin_dir / final, killed_dir / final)
    return {
        "max_abs_diff": diff,
        "tensors": count,
        "steps": steps,
        "killed_at": killed_at,
        "duplicate_log_rows": _duplicate_rows(killed_dir / "metrics.jsonl", log_key),
        "seconds": time.perf_counter() - start,
    }


def _start(args: list[str], log: Path) -> subprocess.Popen:
    paths = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # this robopolicy, not another
    with log.open("w") as out:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "robopolicy", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _kill_after_first_checkpoint(
    proc: subprocess.Popen, run_dir: Path, save_every: int, timeout_s: float
) -> int:
    """SIGKILL ``proc`` as soon as its first checkpoint is in place; the newest step then."""
    deadline = time.monotonic() + timeout_s
    first = run_dir / "checkpoints" / f"{save_every:07d}"
    while not first.is_dir():
        if proc.poll() is not None:
            raise RuntimeError(
                f"the run to kill exited ({proc.returncode}) before {first}: see "
                f"{run_dir.parent / 'killed.log'}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"no checkpoint {first} within {timeout_s} s")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(saved_steps(run_dir)[-1].name)


def _compare(a: Path, b: Path) -> tuple[float, int]:
    """max |a - b| over every tensor of two checkpoints, and how many tensors there were."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    theirs = sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    if files != theirs:
        raise ValueError(f"{a} and {b} hold different tensor files: {files} vs {theirs}")
    worst, count = 0.0, 0
    for name in files:
        x, y = load_file(a / name), load_file(b / name)
        if x.keys() != y.keys():
            raise ValueError(f"{name}: different keys {sorted(x.keys() ^ y.keys())}")
        for key in x:
            if x[key].shape != y[key].shape:
                worst = math.inf
            elif x[key].numel():
                delta = (x[key].double() - y[key].double()).abs().max().item()
                worst = max(worst, delta)
            count += 1
    return worst, count


def _duplicate_rows(metrics: Path, key_prefix: str) -> int:
    """Rows with a ``key_prefix`` metric whose step an earlier such row already logged."""
    seen: set[int] = set()
    duplicates = 0
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if any(k.startswith(key_prefix) for k in row):
            duplicates += row["step"] in seen
            seen.add(row["step"])
    return duplicates


if __name__ == "__main__":  # python -m robopolicy.bench.resume_exactness WORK_DIR LIFT_HDF5
    work, lift = Path(sys.argv[1]), sys.argv[2]
    print(json.dumps({"bc": bc_resume_exactness(work / "bc", lift)}, indent=2))
    print(json.dumps({"rl": rl_resume_exactness(work / "rl")}, indent=2))
