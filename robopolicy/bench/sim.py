"""``robopolicy bench sim``: the task suite's own figures.

- expert success at noise 0 and at the "mixed" noise, with Wilson intervals;
- demonstrations collected per minute, state and pixel observations;
- env steps/s (state observations) against the raw physics limit of the same model on the same
  trajectory: the env's controls are recorded and replayed with ``mj_step`` on the raw model, one
  env step's substeps per call, so the share is the env's overhead and nothing else;
- rendering frames/s per camera at the observation size.

It runs for minutes, so one progress bar counts its stages (four per task).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import machine_info, markdown_table, new_run_dir, write_results
from robopolicy.files import atomic_save_figure
from robopolicy.sim.agents import ExpertAgent
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.vector import make_env


@dataclass
class TaskBench:
    env_id: str
    mixed_noise: float
    expert_episodes: int = 100
    collect_demos_state: int = 20
    collect_demos_pixels: int = 5


@dataclass
class Config:
    tasks: list[TaskBench] = field(default_factory=list)
    num_envs: int = 2
    throughput_steps: int = 3000
    render_frames: int = 300
    image_size: int = 84
    out_root: str = "runs/bench"
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # this suite times things: local only (bench.jobs.local_only)


def run(cfg: Config) -> dict[str, Any]:
    local_only(cfg.executor, "sim")
    out = new_run_dir(cfg.out_root, "sim")
    results: dict[str, Any] = {"suite": "sim", "machine": machine_info(), "tasks": {}}
    stages = _stages(cfg)
    bar = tqdm(total=len(cfg.tasks) * len(stages), desc="bench sim", unit="stage")
    for task in cfg.tasks:
        figures: dict[str, Any] = {}
        for name, measure in stages.items():
            bar.set_postfix_str(f"{task.env_id.split('/')[-1]} {name}")
            figures[name] = measure(task)
            bar.update()
        results["tasks"][task.env_id] = figures
    bar.close()
    write_results(out, results, _report(results))
    _plot(results, out)
    print(f"[bench sim] wrote {out}/report.md")
    for env_id, r in results["tasks"].items():
        e, t = r["expert"]["noise_0"], r["throughput"]
        fps = min(r["render"]["fps"].values())
        print(
            f"  {env_id}: expert {e['success_rate']:.0%} (n={e['n']}), "
            f"{t['env_steps_per_s']:.0f} steps/s = {t['share_of_physics_limit']:.0%} of physics "
            f"limit, render >= {fps:.0f} fps"
        )
    return results


def _stages(cfg: Config) -> dict[str, Callable[[TaskBench], dict[str, Any]]]:
    """What is measured per task, in order, under the names ``results.json`` keeps."""
    return {
        "expert": lambda task: _expert_success(task, cfg.num_envs),
        "collection": lambda task: _collection_rate(task, cfg.num_envs, cfg.image_size),
        "throughput": lambda task: _throughput(task.env_id, cfg.throughput_steps),
        "render": lambda task: render_rate(task.env_id, cfg.image_size, cfg.render_frames),
    }


def _expert_success(task: TaskBench, num_envs: int) -> dict[str, Any]:
    out = {}
    for label, noise in (("noise_0", 0.0), ("mixed", task.mixed_noise)):
        s = evaluate(
            task.env_id,
            ExpertAgent(noise),
            n_episodes=task.expert_episodes,
            seed=0,
            num_envs=num_envs,
            progress=False,
        )
        out[label] = {
            "noise": noise,
            "n": s["n_episodes"],
            "seeds": f"{s['seeds'][0]}..{s['seeds'][-1]}",
            "success_rate": s["success_rate"],
            "success_ci95": s["success_ci95"],
            "mean_episode_length": s["mean_episode_length"],
        }
    return out


def _collection_rate(task: TaskBench, num_envs: int, image_size: int) -> dict[str, Any]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, obs_type, n in (
            ("state", "state", task.collect_demos_state),
            ("pixels", "both", task.collect_demos_pixels),
        ):
            cfg = CollectConfig(
                env_id=task.env_id,
                env_kwargs={"obs_type": obs_type, "image_size": image_size},
                n_demos=n,
                num_envs=num_envs,
                output=str(Path(tmp) / f"{label}.hdf5"),
            )
            s = collect(cfg, progress=False)
            out[label] = {"demos": s["demos"], "demos_per_minute": s["demos_per_minute"]}
    return out


def _throughput(env_id: str, steps: int) -> dict[str, Any]:
    """Env steps/s with random actions in one process, against ``mj_step`` on the same path.

    The physics limit replays the controls the env applied, from the same reset states, one env
    step's substeps per ``mj_step`` call: the same trajectory (contacts and all) at the same call
    granularity, so the share measures the env's own work (action mapping, observations, success)
    rather than a different, contact-free motion.
    """
    env = make_env(env_id, obs_type="state").unwrapped
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)
    env_seconds = _time_env(env, actions)
    controls, resets, env_final = _record_controls(env, actions)
    physics_seconds, replay_final = _time_physics(env, controls, resets)
    env.close()
    env_rate = steps / env_seconds
    limit = steps / physics_seconds
    return {
        "env_steps_per_s": env_rate,
        "physics_steps_per_s": limit * env.n_substeps,
        "substeps_per_env_step": env.n_substeps,
        "physics_limit_env_steps_per_s": limit,
        "share_of_physics_limit": env_rate / limit,
        "episodes": len(resets),
        "replay_state_error": float(np.max(np.abs(replay_final - env_final))),
    }


def _time_env(env: Any, actions: np.ndarray) -> float:
    """Seconds for ``env.step`` over ``actions`` from ``reset(seed=0)``, resetting on success."""
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, _, _ = env.step(action)
        if terminated:
            env.reset()
    return time.perf_counter() - start


def _record_controls(
    env: Any, actions: np.ndarray
) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """The same rollout as ``_time_env``, untimed: the controls each step applied, the state
    after every reset (keyed by the step it precedes) and the state the last step reached."""
    env.reset(seed=0)
    resets = {0: env.get_state()}
    controls = np.empty((len(actions), env.model.nu))
    for i, action in enumerate(actions):
        _, _, terminated, _, _ = env.step(action)
        controls[i] = env.data.ctrl
        last_state = env.get_state()
        if terminated:
            env.reset()
            resets[i + 1] = env.get_state()
    return controls, resets, last_state


def _time_physics(
    env: Any, controls: np.ndarray, resets: dict[int, np.ndarray]
) -> tuple[float, np.ndarray]:
    """Seconds spent in ``mj_step`` replaying ``controls`` on the raw model (resets untimed),
    and the final state, which equals the env's when the replay followed its trajectory."""
    model, data = env.model, env.data
    seconds = 0.0
    for i, control in enumerate(controls):
        if i in resets:
            env.set_state(resets[i])
        data.ctrl[:] = control
        start = time.perf_counter()
        mujoco.mj_step(model, data, nstep=env.n_substeps)
        seconds += time.perf_counter() - start
    return seconds, env.get_state()


def render_rate(env_id: str, size: int, frames: int) -> dict[str, Any]:
    """Frames/s per camera at ``size``, and which OpenGL implementation drew them."""
    env = make_env(env_id, obs_type="state").unwrapped
    env.reset(seed=0)
    rates = {}
    for cam in env.cameras:
        env.render_camera(cam, size)  # context creation is not part of the rate
        start = time.perf_counter()
        for _ in range(frames):
            env.render_camera(cam, size)
        rates[cam] = frames / (time.perf_counter() - start)
    results = {"fps": rates, "gl_renderer": env.gl_renderer_name()}
    env.close()
    return results


def _plot(results: dict[str, Any], out: Path) -> None:
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(tasks))
    for offset, label in ((-0.2, "noise_0"), (0.2, "mixed")):
        rates = [results["tasks"][t]["expert"][label]["success_rate"] for t in tasks]
        ci = np.array([results["tasks"][t]["expert"][label]["success_ci95"] for t in tasks])
        err = np.clip(np.stack([np.array(rates) - ci[:, 0], ci[:, 1] - np.array(rates)]), 0, 1)
        axes[0].bar(x + offset, rates, 0.4, yerr=err, capsize=4, label=label.replace("_", " "))
    axes[0].set(xticks=x, xticklabels=tasks, ylim=(0, 1.05), title="Expert success (95% CI)")
    axes[0].legend()
    env_rate = [results["tasks"][t]["throughput"]["env_steps_per_s"] for t in tasks]
    limit = [results["tasks"][t]["throughput"]["physics_limit_env_steps_per_s"] for t in tasks]
    axes[1].bar(x - 0.2, env_rate, 0.4, label="env steps/s")
    axes[1].bar(x + 0.2, limit, 0.4, label="physics limit")
    axes[1].set(xticks=x, xticklabels=tasks, title="Env throughput (state obs, 1 process)")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out / "sim.png", dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark: sim",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}; MUJOCO_GL={m['mujoco_gl']};"
        f" commit {m['git_commit']}; {m['date']}.",
        "",
        "## Expert success",
        "",
    ]
    rows = []
    for env_id, r in results["tasks"].items():
        for label in ("noise_0", "mixed"):
            e = r["expert"][label]
            low, high = e["success_ci95"]
            rows.append(
                [
                    env_id,
                    e["noise"],
                    e["n"],
                    e["seeds"],
                    f"{e['success_rate']:.0%}",
                    f"[{low:.0%}, {high:.0%}]",
                    f"{e['mean_episode_length']:.1f}",
                ]
            )
    lines += [
        markdown_table(
            ["task", "noise", "n", "seeds", "success", "Wilson 95%", "mean length"], rows
        ),
        "",
    ]
    lines += ["## Demonstrations collected per minute", ""]
    rows = [
        [
            env_id,
            f"{r['collection']['state']['demos_per_minute']:.0f}",
            f"{r['collection']['pixels']['demos_per_minute']:.0f}",
        ]
        for env_id, r in results["tasks"].items()
    ]
    lines += [markdown_table(["task", "state", "pixels (both cameras)"], rows), ""]
    lines += [
        "## Env throughput (state obs, one process) and rendering",
        "",
        "Random actions; the physics limit is `mj_step` on the raw model replaying the env's"
        " controls from the same states, one env step's substeps per call (same trajectory).",
        "",
    ]
    rows = []
    for env_id, r in results["tasks"].items():
        t = r["throughput"]
        fps = ", ".join(f"{cam} {v:.0f}" for cam, v in r["render"]["fps"].items())
        rows.append(
            [
                env_id,
                f"{t['env_steps_per_s']:.0f}",
                f"{t['physics_limit_env_steps_per_s']:.0f}",
                f"{t['share_of_physics_limit']:.0%}",
                t["substeps_per_env_step"],
                fps,
                r["render"]["gl_renderer"],
            ]
        )
    lines += [
        markdown_table(
            [
                "task",
                "env steps/s",
                "physics limit",
                "share",
                "substeps",
                "render fps per camera",
                "GL renderer",
            ],
            rows,
        ),
        "",
        "![sim](sim.png)",
        "",
    ]
    return "\n".join(lines)
