"""The main demo: the workbench end to end on a CPU. ``make demo`` runs the short budgets
(``QUICK``, under 10 minutes on 2 cores); ``make demo-full`` (``--full``) the longer ones the
figures in docs/benchmarks/demo.md were first measured with (~16 minutes).

1. collect scripted-expert demonstrations of Lift (robomimic-format HDF5);
2. train a diffusion policy on them (residual-MLP denoiser, DDIM sampling: the CPU recipe of
   ``configs/train/lift_diffusion_mlp.yaml``; the U-Net takes ~10x longer per step on a CPU);
3. evaluate the policy and the expert on held-out seeds (success, Wilson interval, mp4);
4. the point of the workbench: a policy trained on only 5 noisy demos is imperfect; a short
   residual RL run (``configs/rl/residual_lift.yaml``) improves it without touching its weights;
5. write ``runs/demo/<timestamp>/report.md`` tying it together, before and after RL included,
   with a frame strip of the policy's and the expert's rollouts and the RL curve.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robopolicy.config import CONFIG_DIR, load_config  # noqa: E402
from robopolicy.data.hdf5 import dataset_info  # noqa: E402
from robopolicy.files import atomic_save_figure, atomic_write_text  # noqa: E402
from robopolicy.rl.config import FinetuneConfig  # noqa: E402
from robopolicy.rl.finetune import finetune  # noqa: E402
from robopolicy.sim.agents import ExpertAgent  # noqa: E402
from robopolicy.sim.collect import CollectConfig, collect  # noqa: E402
from robopolicy.sim.evaluate import evaluate, summary_line  # noqa: E402
from robopolicy.training.bc import train_bc  # noqa: E402
from robopolicy.training.config import TrainConfig  # noqa: E402

ENV_ID = "robopolicy/Lift-v0"
EVAL_EPISODES = 50


@dataclass(frozen=True)
class Budget:
    demos: int  # expert demonstrations for the main policy
    train_steps: int  # its training steps
    rl_env_steps: int  # residual RL on the scarce-data base
    rl_eval_every: int  # env steps between RL evals (20 episodes each)


QUICK = Budget(demos=50, train_steps=5_000, rl_env_steps=20_000, rl_eval_every=5_000)
FULL = Budget(demos=100, train_steps=15_000, rl_env_steps=20_000, rl_eval_every=5_000)


def main() -> None:
    parser = argparse.ArgumentParser(description="robopolicy's main demo (see the docstring)")
    parser.add_argument("--full", action="store_true", help="the longer budgets (~16 min)")
    budget = FULL if parser.parse_args().full else QUICK
    run = Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    print(f"[demo] 1/5 collecting {budget.demos} expert demonstrations of {ENV_ID}")
    demos = CollectConfig(env_id=ENV_ID, n_demos=budget.demos, output=str(run / "lift.hdf5"))
    data = collect(demos)
    info = dataset_info(data["output"])

    print(f"[demo] 2/5 training a diffusion policy for {budget.train_steps} steps")
    cfg = load_config(
        CONFIG_DIR / "train/lift_diffusion_mlp.yaml",
        TrainConfig,
        [
            f"task.dataset={data['output']}",
            f"run_dir={run / 'policy'}",
            f"optim.steps={budget.train_steps}",
            f"loop.save_every={budget.train_steps}",
            f"loop.final_eval_episodes={EVAL_EPISODES}",
        ],
    )
    train_start = time.perf_counter()
    result = train_bc(cfg)
    train_minutes = (time.perf_counter() - train_start) / 60
    policy_eval = result["eval"]

    print(f"[demo] 3/5 evaluating the expert on the same {EVAL_EPISODES} seeds")
    expert_eval = evaluate(
        ENV_ID, ExpertAgent(0.0), n_episodes=EVAL_EPISODES, out_dir=run / "expert"
    )

    steps = budget.rl_env_steps
    print(f"[demo] 4/5 residual RL on a policy trained from 5 noisy demos ({steps} steps)")
    rl = _residual_rl(run, budget)

    total_minutes = (time.perf_counter() - start) / 60
    _frame_strip(run, {"policy": policy_eval, "expert": expert_eval})
    _rl_curve(run, rl)
    report = _report(
        data, info, cfg, result, policy_eval, expert_eval, train_minutes, total_minutes, budget
    )
    atomic_write_text(run / "report.md", "\n".join([report, _rl_report(rl), _videos(run)]))
    print(f"[demo] 5/5 policy: {summary_line(policy_eval)}")
    print(f"[demo]      expert: {summary_line(expert_eval)}")
    print(f"[demo]      scarce-data base: {summary_line(rl['before'])}")
    print(f"[demo]      + residual RL: {summary_line(rl['after'])}")
    print(f"[demo] report: {run / 'report.md'} ({total_minutes:.1f} min in all)")


def _residual_rl(run: Path, budget: Budget) -> dict:
    """Scarce data -> imperfect base -> residual RL; both evaluated on the same seeds."""
    scarce = load_config(
        CONFIG_DIR / "collect/lift_scarce.yaml", CollectConfig, [f"output={run / 'scarce.hdf5'}"]
    )
    collect(scarce)
    base_cfg = load_config(
        CONFIG_DIR / "train/lift_diffusion_mlp_scarce.yaml",
        TrainConfig,
        [
            f"task.dataset={scarce.output}",
            f"run_dir={run / 'scarce_base'}",
            f"loop.final_eval_episodes={EVAL_EPISODES}",
        ],
    )
    base = train_bc(base_cfg)
    rl_cfg = load_config(
        CONFIG_DIR / "rl/residual_lift.yaml",
        FinetuneConfig,
        [
            f"base={base['checkpoint']}",
            f"run_dir={run / 'residual'}",
            f"env_steps={budget.rl_env_steps}",
            f"eval_every={budget.rl_eval_every}",
            f"final_eval_episodes={EVAL_EPISODES}",
        ],
    )
    start = time.perf_counter()
    rl = finetune(rl_cfg)
    return {
        "before": base["eval"],
        "after": rl["final"],
        "history": rl["history"],
        "minutes": (time.perf_counter() - start) / 60,
        "config": rl_cfg,
        "checkpoint": rl["checkpoint"],
    }


def _rate(summary: dict) -> str:
    low, high = summary["success_ci95"]
    return (
        f"{summary['success_rate']:.0%} (Wilson 95% [{low:.0%}, {high:.0%}], "
        f"n={summary['n_episodes']}, seeds {summary['seeds'][0]}..{summary['seeds'][-1]})"
    )


def _rl_report(rl: dict) -> str:
    before, after = rl["before"]["success_rate"], rl["after"]["success_rate"]
    verdict = (
        "Residual RL improved the policy."
        if rl["after"]["success_ci95"][0] > rl["before"]["success_ci95"][1]
        else "The improvement is not significant at this budget (the Wilson intervals overlap); "
        "longer runs are in docs/BENCHMARKS.md (`robopolicy bench residual`)."
        if after > before
        else "Residual RL did not improve the policy within this budget."
    )
    cfg = rl["config"]
    periodic = rl["history"][:-1]  # the last row is the final eval, reported above
    curve = ", ".join(f"{r['env_steps']}: {r['success_rate']:.0%}" for r in periodic)
    return "\n".join(
        [
            "## 4. Residual RL on a policy trained from 5 noisy demos",
            f"The same recipe on only 5 noisy demonstrations (`configs/collect/lift_scarce.yaml`) "
            f"gives an imperfect base: success {_rate(rl['before'])}.",
            f"A residual actor (TD3, {cfg.agent.critic_heads} LayerNorm critics, "
            f"{cfg.agent.hidden_dim}x{cfg.agent.num_layers}, residual scale "
            f"{cfg.agent.action_scale}) learned corrections for {cfg.env_steps} env steps "
            f"in {rl['minutes']:.1f} min; the base's weights were not touched.",
            f"- after residual RL: success {_rate(rl['after'])}",
            f"- eval success during RL (env steps: success on {cfg.eval_episodes} episodes): "
            f"{curve}",
            "",
            verdict,
            "",
            "![residual RL curve](rl_curve.png)",
            "",
            f"Each periodic eval runs {cfg.eval_episodes} episodes; the band is its Wilson 95% "
            "interval. The final eval and the dashed line (the base without RL) run the 50 "
            "held-out seeds. Checkpoint "
            f"`{rl['checkpoint']}` (`robopolicy eval` loads it with its base).",
            "",
        ]
    )


def _policy_name(policy) -> str:
    """What the network is: the sizes that matter for its backbone."""
    if policy.backbone == "mlp":
        net = f"residual-MLP denoiser ({policy.mlp_num_layers} blocks of {policy.mlp_hidden_dim})"
    else:
        net = f"temporal U-Net (down_dims {list(policy.down_dims)})"
    return f"{policy.type} policy, {net}"


def _frame_strip(run: Path, evals: dict[str, dict], frames: int = 6) -> None:
    """``frames.png``: evenly spaced frames of each agent's first recorded rollout."""
    rows = {}
    for name, summary in evals.items():
        video = summary.get("video")
        if video and Path(video).is_file():
            clip = iio.imread(video, plugin="FFMPEG", index=None)
            dark = clip.reshape(len(clip), -1).max(axis=1) < 16  # the gaps between episodes
            first = clip[: int(np.argmax(dark))] if dark.any() and not dark[0] else clip
            rows[name] = first[np.linspace(0, len(first) - 1, frames).astype(int)]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), frames, figsize=(2 * frames, 2.1 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (name, clip) in enumerate(rows.items()):
        for c, frame in enumerate(clip):
            axes[r, c].imshow(frame)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name)
    fig.suptitle("the first evaluation episode, start to end")
    fig.tight_layout()
    atomic_save_figure(fig, run / "frames.png", 80)
    plt.close(fig)


def _rl_curve(run: Path, rl: dict) -> None:
    """``rl_curve.png``: eval success against env steps with its Wilson band, the base as a
    line."""
    *periodic, final = rl["history"]  # evals of eval_episodes each, then the final one
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if periodic:
        steps = [h["env_steps"] for h in periodic]
        low = [h["success_ci_low"] for h in periodic]
        high = [h["success_ci_high"] for h in periodic]
        n = periodic[0]["n_episodes"]
        rate = [h["success_rate"] for h in periodic]
        ax.plot(steps, rate, "o-", color="C0", label=f"base + residual RL (n = {n} per eval)")
        ax.fill_between(steps, low, high, color="C0", alpha=0.2, label="Wilson 95% interval")
    ax.errorbar(
        [final["env_steps"]],
        [final["success_rate"]],
        yerr=[
            [final["success_rate"] - final["success_ci_low"]],
            [final["success_ci_high"] - final["success_rate"]],
        ],
        fmt="s",
        color="C2",
        capsize=4,
        label=f"final eval (n = {final['n_episodes']}, Wilson 95%)",
    )
    base = rl["before"]
    ax.axhline(
        base["success_rate"],
        color="C3",
        ls="--",
        label=f"scarce-data base alone (n = {base['n_episodes']})",
    )
    ax.set(xlabel="env steps of residual RL", ylabel="success rate", ylim=(0, 1.05))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, run / "rl_curve.png", 120)
    plt.close(fig)


def _videos(run: Path) -> str:
    videos = sorted(run.rglob("*.mp4"))
    lines = [f"- [{v.relative_to(run)}]({v.relative_to(run)})" for v in videos]
    return "\n".join(["## Videos", "", *lines, ""])


def _report(
    data, info, cfg, result, policy_eval, expert_eval, train_minutes, total_minutes, budget
) -> str:
    keys = ", ".join(f"`{key}` {tuple(spec['shape'])}" for key, spec in info["obs"].items())
    train = result["train"]
    return "\n".join(
        [
            f"# robopolicy demo, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Total time {total_minutes:.1f} min on this machine. Budgets: {budget.demos} demos, "
            f"{budget.train_steps} training steps, {budget.rl_env_steps} env steps of residual "
            f"RL (`make demo-full` runs {FULL.demos} / {FULL.train_steps} / "
            f"{FULL.rl_env_steps})."
            if budget == QUICK
            else f"Total time {total_minutes:.1f} "
            "min on this machine (the full budgets of `make demo-full`).",
            "",
            "## 1. Demonstrations",
            f"`{data['output']}`: {info['num_demos']} demos, {info['total_samples']} samples, "
            f"{data['demos_per_minute']:.0f} demos/minute (expert success while collecting "
            f"{data['expert_success_rate']:.0%}). Observation keys: {keys}.",
            "",
            "## 2. Diffusion policy",
            f"{_policy_name(cfg.policy)}, "
            f"obs horizon {cfg.policy.obs_horizon}, chunk {cfg.policy.pred_horizon}, executes "
            f"{cfg.policy.action_horizon}; DDIM {cfg.policy.num_inference_steps} steps. Trained "
            f"{result['steps']} steps at batch {cfg.optim.batch_size} in {train_minutes:.1f} min "
            f"({train['samples_per_s']:.0f} samples/s, {train['data_wait_share']:.1%} of step "
            f"time waiting for data); final loss {train['loss']:.4f}.",
            f"Checkpoint: `{result['checkpoint']}`",
            "",
            "## 3. Evaluation (same held-out seeds)",
            f"- policy: success {_rate(policy_eval)}, {policy_eval['time_per_action_ms']:.1f} ms "
            "per action",
            f"- expert: success {_rate(expert_eval)}",
            "",
            "![policy and expert rollouts](frames.png)",
            "",
        ]
    )


if __name__ == "__main__":
    main()
