"""The main demo (``make demo``): the workbench end to end on a CPU, in about 16 minutes.

1. collect scripted-expert demonstrations of Lift (robomimic-format HDF5);
2. train a diffusion policy on them (residual-MLP denoiser, DDIM sampling: the CPU recipe of
   ``configs/train/lift_diffusion_mlp.yaml``; the U-Net takes ~10x longer per step on a CPU);
3. evaluate the policy and the expert on held-out seeds (success, Wilson interval, mp4);
4. the point of the workbench: a policy trained on only 5 noisy demos is imperfect; a short
   residual RL run (``configs/rl/residual_lift.yaml``) improves it without touching its weights;
5. write ``runs/demo/<timestamp>/report.md`` tying it together, before and after RL included.
"""

from __future__ import annotations

import time
from pathlib import Path

from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.data.hdf5 import dataset_info
from robopolicy.files import atomic_write_text
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.sim.agents import ExpertAgent
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.evaluate import evaluate, summary_line
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig

ENV_ID = "robopolicy/Lift-v0"
DEMOS = 100
TRAIN_STEPS = 15_000
EVAL_EPISODES = 50
RL_ENV_STEPS = 20_000


def main() -> None:
    run = Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    print(f"[demo] 1/5 collecting {DEMOS} expert demonstrations of {ENV_ID}")
    data = collect(CollectConfig(env_id=ENV_ID, n_demos=DEMOS, output=str(run / "lift.hdf5")))
    info = dataset_info(data["output"])

    print(f"[demo] 2/5 training a diffusion policy for {TRAIN_STEPS} steps")
    cfg = load_config(
        CONFIG_DIR / "train/lift_diffusion_mlp.yaml",
        TrainConfig,
        [
            f"task.dataset={data['output']}",
            f"run_dir={run / 'policy'}",
            f"optim.steps={TRAIN_STEPS}",
            f"loop.save_every={TRAIN_STEPS}",
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

    print(f"[demo] 4/5 residual RL on a policy trained from 5 noisy demos ({RL_ENV_STEPS} steps)")
    rl = _residual_rl(run)

    total_minutes = (time.perf_counter() - start) / 60
    report = _report(
        data, info, cfg, result, policy_eval, expert_eval, train_minutes, total_minutes
    )
    atomic_write_text(run / "report.md", report + _rl_report(rl))
    print(f"[demo] 5/5 policy: {summary_line(policy_eval)}")
    print(f"[demo]      expert: {summary_line(expert_eval)}")
    print(f"[demo]      scarce-data base: {summary_line(rl['before'])}")
    print(f"[demo]      + residual RL: {summary_line(rl['after'])}")
    print(f"[demo] report: {run / 'report.md'} ({total_minutes:.1f} min in all)")


def _residual_rl(run: Path) -> dict:
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
            f"env_steps={RL_ENV_STEPS}",
            "eval_every=5000",
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
    curve = ", ".join(f"{r['env_steps']}: {r['success_rate']:.0%}" for r in rl["history"])
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
            "Curve: [residual/success.png](residual/success.png); checkpoint "
            f"`{rl['checkpoint']}` (`robopolicy eval` loads it with its base).",
            "",
        ]
    )


def _report(data, info, cfg, result, policy_eval, expert_eval, train_minutes, total_minutes) -> str:
    keys = ", ".join(f"`{key}` {tuple(spec['shape'])}" for key, spec in info["obs"].items())
    train = result["train"]
    return "\n".join(
        [
            f"# robopolicy demo, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Total time {total_minutes:.1f} min on this machine.",
            "",
            "## 1. Demonstrations",
            f"`{data['output']}`: {info['num_demos']} demos, {info['total_samples']} samples, "
            f"{data['demos_per_minute']:.0f} demos/minute (expert success while collecting "
            f"{data['expert_success_rate']:.0%}). Observation keys: {keys}.",
            "",
            "## 2. Diffusion policy",
            f"{cfg.policy.type} / {cfg.policy.backbone} (down_dims {list(cfg.policy.down_dims)}), "
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
            "Videos: [policy](policy/eval/rollouts.mp4), [expert](expert/rollouts.mp4)",
            "",
        ]
    )


if __name__ == "__main__":
    main()
