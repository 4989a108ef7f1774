"""``robopolicy <command> CONFIG [key=value ...]``: parse, then call one function.

Commands:
  collect CONFIG   run a scripted expert and write robomimic-format HDF5 demonstrations
  train CONFIG     train a BC policy (diffusion or flow); checkpoints, logs, final eval
  finetune CONFIG  improve a BC policy with RL (residual RL), or run SAC/TD3 from scratch
  eval TARGET      evaluate a checkpoint (or an eval config) on seeded episodes; eval.json, video
  offline-data CONFIG  make a D4RL-style offline dataset (medium, medium-replay) from a SAC run
  synth ACTION ...  policy-guided diffusion: train / generate / inspect a trajectory model
  offline CONFIG   offline RL (TD3+BC, IQL) on real data mixed with (guided) synthetic data
  rti-tune CKPT    choose RTI's K' (denoising steps per action) for a checkpoint by success
  export CKPT OUT  write a deployable directory: checkpoint, deploy.json, policy.onnx
  serve CKPT       serve a checkpoint to robot controllers (websocket + msgpack, 127.0.0.1)
  bench SUITE      run a benchmark suite; write results.json, a Markdown report and plots
  sweep CONFIG     search train/finetune settings on Ray Tune; a results table, the best run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from robopolicy import __version__

EPILOG = """examples:
  robopolicy collect configs/collect/lift_proficient.yaml n_demos=50
  robopolicy train configs/train/lift_diffusion.yaml optim.steps=2000
  robopolicy finetune configs/rl/residual_lift.yaml env_steps=50000
  robopolicy eval runs/lift_diffusion n_episodes=100  # runs/<name>: its newest run
  robopolicy eval configs/eval/lift_expert.yaml n_episodes=100 noise=0.6
  robopolicy eval RUN execution.mode=rti execution.sampler=ddpm \
      execution.num_inference_steps=100 execution.rti_start_step=2 \
      execution.rti_cold_start_steps=10
  robopolicy rti-tune RUN candidates=[1,2,3,5]
  torchrun --nproc_per_node 2 -m robopolicy train configs/train/lift_diffusion.yaml
  robopolicy export runs/lift_diffusion_mlp/<time> exports/lift
  robopolicy serve exports/lift port=8765 execution.mode=rti execution.sampler=ddpm \
      execution.num_inference_steps=100 execution.rti_start_step=2 \
      execution.rti_cold_start_steps=10
  robopolicy bench sim
  robopolicy bench residual executor=ray ray.address=auto
  robopolicy sweep configs/rl/residual_lift.yaml "grid.agent.actor_lr=[1e-4,3e-4]" early_stop=true
  robopolicy offline-data configs/offline/hopper_medium.yaml
  robopolicy synth train configs/synth/hopper_medium.yaml
  robopolicy synth generate runs/synth_hopper_medium policy=RUN guidance=0.1 trajectories=512
  robopolicy offline configs/offline/td3bc_hopper_medium.yaml synthetic.guidance=0.1
Overrides are OmegaConf dot-list items (key=value, nested.key=value); unknown keys are errors."""


# What a resume (resume=RUN or resume=RUN/checkpoints/STEP) may change; the rest comes from the
# run's saved config (tests/test_cli.py checks these lists against the RESUMABLE tuples).
# Each command's schema (every key it takes; unknown keys are errors) and the keys most runs set.
# tests/test_help_examples.py checks that every key named here is a key of its schema.
KEYS_HELP = {
    "collect": (
        "robopolicy.sim.collect.CollectConfig",
        ("env_id", "n_demos", "noise", "output", "env_kwargs.obs_type", "num_envs", "num_threads"),
    ),
    "train": (
        "robopolicy.training.config.TrainConfig",
        (
            "task.dataset",
            "task.env_from_dataset",
            "task.filter_key",
            "policy.type",
            "policy.backbone",
            "optim.steps",
            "optim.batch_size",
            "optim.lr",
            "optim.device",
            "optim.num_threads",
            "loop.save_every",
            "loop.final_eval_episodes",
            "run_dir",
            "resume",
        ),
    ),
    "finetune": (
        "robopolicy.rl.config.FinetuneConfig",
        (
            "method",
            "base",
            "env_steps",
            "seed",
            "eval_every",
            "eval_episodes",
            "agent.hidden_dim",
            "agent.critic_heads",
            "agent.batch_size",
            "device",
            "num_threads",
            "run_dir",
            "resume",
        ),
    ),
    "eval": (
        "robopolicy.sim.evaluate.EvalConfig",
        (
            "n_episodes",
            "seed",
            "video_episodes",
            "out_dir",
            "execution.mode",
            "execution.sampler",
            "execution.num_inference_steps",
            "execution.rti_start_step",
            "execution.rti_cold_start_steps",
            "obs_guard.action",
            "executor",
            "num_threads",
        ),
    ),
    "offline-data": (
        "robopolicy.synth.make_data.OfflineDataConfig",
        ("kind", "source", "transitions", "output", "seed"),
    ),
    "offline": (
        "robopolicy.offline.config.OfflineConfig",
        ("dataset", "agent.algo", "steps", "synthetic.model", "synthetic.guidance", "num_threads"),
    ),
    "rti-tune": (
        "robopolicy.sim.rti_tune.RTITuneConfig",
        ("candidates", "tolerance", "n_episodes", "out", "num_threads"),
    ),
    "sweep": (
        "robopolicy.sweep.SweepConfig (beside the searched train or finetune config's keys)",
        ("metric", "mode", "num_samples", "early_stop", "ray.address", "ray.num_cpus"),
    ),
    "serve": (
        "robopolicy.deploy.server.ServeConfig",
        (
            "host",
            "port",
            "api_key_file",
            "device",
            "num_threads",
            "max_connections",
            "obs_guard.margin",
            "obs_guard.action",
            "execution.mode",
        ),
    ),
}


def _keys_epilog(command: str) -> str:
    schema, keys = KEYS_HELP[command]
    return f"main keys: {', '.join(keys)}. Every key: the dataclass {schema}."


def _resumable_keys(command: str) -> tuple[str, ...]:
    """What a resume of ``command`` may change, as ``--help`` names it (a group as ``group.*``),
    from the one list the resume itself enforces."""
    import dataclasses
    import typing

    from robopolicy.rl.config import RESUMABLE as FINETUNE_RESUMABLE
    from robopolicy.rl.config import FinetuneConfig
    from robopolicy.training.config import RESUMABLE as TRAIN_RESUMABLE
    from robopolicy.training.config import TrainConfig

    schema, keys = {
        "train": (TrainConfig, TRAIN_RESUMABLE),
        "finetune": (FinetuneConfig, FINETUNE_RESUMABLE),
    }[command]
    hints = typing.get_type_hints(schema)
    return tuple(f"{key}.*" if dataclasses.is_dataclass(hints.get(key)) else key for key in keys)


RESUME_COMMANDS = ("train", "finetune")


def _resume_epilog(command: str) -> str:
    return (
        "resume=RUN (its newest checkpoint) or resume=RUN/checkpoints/STEP goes on exactly as "
        "the run began: every setting comes from the config saved with the checkpoint (CONFIG's "
        "own settings give way), and the overrides may change only "
        f"{', '.join(_resumable_keys(command))}; others are refused unless they repeat the saved "
        "value. It writes into the checkpoint's run, which must not hold newer checkpoints; "
        "run_dir=NEW branches off into a new folder (its config records the parent checkpoint "
        "as resume), as it must for a checkpoint outside a run's checkpoints/ folder."
    )


def _cmd_collect(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config
    from robopolicy.sim.collect import CollectConfig, collect

    cfg = load_config(args.config, CollectConfig, args.overrides)
    s = collect(cfg)
    print(
        f"collected {s['demos']} demos ({s['samples']} steps) of {s['env_id']} in "
        f"{s['minutes']:.1f} min ({s['demos_per_minute']:.0f}/min; expert success "
        f"{s['expert_success_rate']:.0%} over {s['attempts']} episodes) -> {s['output']}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from robopolicy.resume import load_run_config
    from robopolicy.training.bc import train_bc
    from robopolicy.training.config import RESUMABLE, TrainConfig

    cfg = load_run_config(args.config, TrainConfig, args.overrides, RESUMABLE, derived=["shapes"])
    result = train_bc(cfg)
    if "checkpoint" in result:
        print(f"trained {result['steps']} steps -> {result['checkpoint']}")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from robopolicy.resume import load_run_config
    from robopolicy.rl.config import RESUMABLE, FinetuneConfig
    from robopolicy.rl.finetune import finetune
    from robopolicy.sim.evaluate import summary_line

    cfg = load_run_config(args.config, FinetuneConfig, args.overrides, RESUMABLE, "finetune")
    result = finetune(cfg)
    best = result.get("best")
    at_best = (
        ""
        if best is None
        else (f"best eval {best['success_rate']:.0%} at {best['env_steps']} env steps; ")
    )
    print(
        f"{summary_line(result['final'])}; {at_best}{_finetune_time(result)} "
        f"-> {result['checkpoint']}"
    )


def _finetune_time(result: dict) -> str:
    """How long the run took: in all, and since a resume (a run resumed from a checkpoint
    saved before runs kept their clock has no total)."""
    total = "" if result["minutes"] is None else f" in {result['minutes']:.1f} min"
    if not result["start_env_steps"]:
        return f"{result['env_steps']} env steps{total}"
    done = result["env_steps"] - result["start_env_steps"]
    if not done:
        return f"{result['env_steps']} env steps{total} (the run had already ended)"
    return (
        f"{result['env_steps']} env steps{total} ({done} since the resume, "
        f"{result['session_minutes']:.1f} min)"
    )


def _cmd_offline_data(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config
    from robopolicy.synth.make_data import OfflineDataConfig, make_offline_data

    s = make_offline_data(load_config(args.config, OfflineDataConfig, args.overrides))
    refs = s["references"]
    print(
        f"wrote {s['episodes']} episodes ({s['transitions']} transitions, mean return "
        f"{s['mean_return']:.1f}; references random {refs['random']:.1f}, expert "
        f"{refs['expert']:.1f}) in {s['minutes']:.1f} min -> {s['output']}"
    )


def _cmd_synth(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config

    if args.action == "train":
        from robopolicy.synth.config import SynthConfig
        from robopolicy.synth.train import train_trajectory_model

        result = train_trajectory_model(load_config(args.target, SynthConfig, args.overrides))
        dyn = result["inspect"].get("dynamics") or {}
        check = f"; unguided next-state MSE {dyn['next_state_mse']:.4f}" if dyn else ""
        print(
            f"trained on {result['windows']} windows in {result['minutes']:.1f} min{check} "
            f"-> {result['checkpoint']}"
        )
        return
    from robopolicy.offline.agents import load_offline_agent
    from robopolicy.synth.commands import GenerateConfig, run_generate, summary

    cfg = load_config(None, GenerateConfig, [f"model={args.target}", *args.overrides])
    write = args.action == "generate"
    print(summary(run_generate(cfg, write, load_policy=load_offline_agent)))


def _cmd_offline(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config
    from robopolicy.offline.config import OfflineConfig
    from robopolicy.offline.train import train_offline

    result = train_offline(load_config(args.config, OfflineConfig, args.overrides))
    final = result["final"]
    norm = final["normalized_return"]
    print(
        f"final return {final['mean_return']:.1f}"
        + (f" (normalised {norm:.1f})" if norm is not None else "")
        + f" in {result['minutes']:.1f} min -> {result['checkpoint']}"
    )


def _cmd_eval(args: argparse.Namespace) -> None:
    from robopolicy.sim.evaluate import load_eval_config, run_eval_config, summary_line

    summary = run_eval_config(load_eval_config(args.config, args.overrides))
    print(summary_line(summary) + f" -> {summary['out_dir']}/eval.json")


def _cmd_rti_tune(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config
    from robopolicy.sim.rti_tune import RTITuneConfig, run_rti_tune, summary_lines

    cfg = load_config(None, RTITuneConfig, [f"checkpoint={args.config}", *args.overrides])
    print("\n".join(summary_lines(run_rti_tune(cfg))))


def _cmd_export(args: argparse.Namespace) -> None:
    from robopolicy.deploy.export import export_checkpoint

    pick = "best" if args.best else "last"
    result = export_checkpoint(args.checkpoint, args.out, onnx=not args.no_onnx, pick=pick)
    onnx = result.get("onnx")
    check = f"; ONNX matches torch to {onnx['max_abs_diff']:.1e}" if onnx else ""
    print(f"exported {result['source']} -> {result['out']}{check}")


def _cmd_serve(args: argparse.Namespace) -> None:
    from robopolicy.config import ConfigError, load_config
    from robopolicy.deploy.server import API_KEY_ENV, ServeConfig, run_server

    if any(item.split("=", 1)[0].strip() == "api_key" for item in args.overrides):
        raise ConfigError(
            "api_key= on the command line is visible to every user in `ps`; put the key in "
            f"the {API_KEY_ENV} environment variable or in a file given as api_key_file=PATH"
        )
    run_server(load_config(None, ServeConfig, [f"checkpoint={args.config}", *args.overrides]))


def _cmd_sweep(args: argparse.Namespace) -> None:
    from robopolicy.sweep import plan_sweep, run_sweep, summary_lines

    print("\n".join(summary_lines(run_sweep(plan_sweep(args.config, args.overrides)))))


def _cmd_bench(args: argparse.Namespace) -> None:
    from robopolicy.bench import run_suite

    run_suite(args.suite, args.overrides)


def build_parser(help_requested: bool = True) -> argparse.ArgumentParser:
    """The command line. Without ``help_requested`` the resume help, whose key lists live in
    modules that import torch, is left out: ``robopolicy --version`` stays instant."""
    parser = argparse.ArgumentParser(
        prog="robopolicy",
        description="Diffusion and flow-matching robot policies, and the RL that improves them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"robopolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, helptext, target in (
        ("collect", _cmd_collect, "collect expert demonstrations into robomimic HDF5", "config"),
        ("train", _cmd_train, "train a BC policy (diffusion or flow matching)", "config"),
        (
            "finetune",
            _cmd_finetune,
            "improve a BC policy with off-policy RL (method=residual: a per-step "
            "correction; dsrl_sac, dsrl_na: steer its noise; expo: keep training it by "
            "imitation under a bounded edit and an argmax-Q choice), or learn from scratch "
            "(method=scratch); logs success against env steps, checkpoints (and the best "
            "eval's as checkpoints/best), final eval",
            "config",
        ),
        (
            "eval",
            _cmd_eval,
            "evaluate a checkpoint or an eval config: success with a Wilson interval, video",
            "checkpoint or config",
        ),
        (
            "offline-data",
            _cmd_offline_data,
            "make a D4RL-style offline dataset (kind=medium | medium_replay) from a SAC run, "
            "with random and expert return references",
            "config",
        ),
        (
            "offline",
            _cmd_offline,
            "offline RL (agent.algo=td3bc | iql) on a dataset, mixed with synthetic data from a "
            "trajectory model (synthetic.model, synthetic.guidance); logs, checkpoints, eval",
            "config",
        ),
        (
            "rti-tune",
            _cmd_rti_tune,
            "choose RTI's K' for a checkpoint: success of each K' against the full chain",
            "checkpoint",
        ),
        (
            "serve",
            _cmd_serve,
            "serve a checkpoint to robot controllers over websockets (msgpack, no pickle); "
            "overrides: host (127.0.0.1), port (8765), api_key_file (a file holding the API key; "
            "or set ROBOPOLICY_API_KEY; api_key= is refused: `ps` would show it), device, "
            "num_threads, execution.* (mode chunked|ensemble|rti, ...); observation guard: "
            "obs_guard.margin (10: how far, in normalised units, beyond the training range "
            "[-1, 1] an observation may lie), obs_guard.action (warn: log it and act | error: "
            "refuse it); a non-finite action is never sent; per-client limits: "
            "max_message_bytes (8 MiB), max_queued_messages (2), send_buffer_bytes (64 KiB), "
            "send_timeout_s (10: drop a client that does not read), idle_timeout_s (300), "
            "max_connections (32)",
            "checkpoint",
        ),
        (
            "sweep",
            _cmd_sweep,
            'search a train or finetune config on Ray Tune: "grid.<key>=[a,b]", choice., '
            "uniform., loguniform. keys; num_samples, metric (success_rate|mean_return), mode, "
            "early_stop (ASHA), ray.address, ray.num_cpus, ray.num_gpus; other key=value set "
            "the config; writes sweep.csv/.md and names the best run's checkpoint",
            "config",
        ),
    ):
        epilog = _keys_epilog(name)
        if help_requested and name in RESUME_COMMANDS:
            epilog += "\n\n" + _resume_epilog(name)
        p = sub.add_parser(name, help=helptext, description=helptext, epilog=epilog)
        p.add_argument("config", metavar=target.upper().replace(" ", "_"), help=f"the {target}")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=func)
    p = sub.add_parser(
        "export",
        help="export a checkpoint for deployment (deploy.json metadata + ONNX)",
        description="copy a checkpoint into OUT with deploy.json (observation keys and shapes, "
        "action meaning, horizons, control Hz) and policy.onnx (observations + noise -> chunk, "
        "normaliser included), checked against torch with onnxruntime",
    )
    p.add_argument("checkpoint", help="a checkpoint or run directory")
    p.add_argument("out", help="the new export directory (must not exist)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX graph")
    p.add_argument(
        "--best",
        action="store_true",
        help="of a run: its checkpoints/best (an RL run's best eval), not its final checkpoint",
    )
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser(
        "synth",
        help="policy-guided diffusion: train, generate from or inspect a trajectory model",
        description="train CONFIG: fit a trajectory diffusion model to an offline dataset; "
        "generate MODEL: sample trajectories (policy=<offline checkpoint> guidance=<lambda> "
        "to guide them) into an HDF5 dataset plus a report; inspect MODEL: the report only "
        "(dynamics error, target-policy likelihood, statistics against the real data)",
    )
    p.add_argument("action", choices=["train", "generate", "inspect"])
    p.add_argument("target", metavar="CONFIG_OR_MODEL", help="train: a config; else a model run")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_synth)
    from robopolicy.bench import SUITES

    p = sub.add_parser(
        "bench",
        help="run a benchmark suite",
        description="run a benchmark suite (its config: configs/bench/SUITE.yaml); writes "
        "runs/bench/SUITE/<time>/results.json, report.md and plots",
        epilog="examples:\n"
        "  robopolicy bench residual env_steps=30000\n"
        '  robopolicy bench dsrl "only=[pickplace]" "methods=[dsrl_sac]" "seeds=[0]"\n'
        "  robopolicy bench dsrl_gpu    # on a CUDA GPU, at the papers' network sizes and UTD\n"
        '  robopolicy bench dsrl "methods=[none]" "previous=[runs/bench/residual/<time>]" '
        "base_draws=8\n"
        '  robopolicy bench dsrl "only=[pickplace]" resume=runs/bench/dsrl/<time>\n'
        "    residual, dsrl: previous= adds an earlier bench's runs from the same base;\n"
        "    resume= goes on with an interrupted bench in its folder (finished runs are read\n"
        "    back, the others go on from their newest checkpoints);\n"
        "    base_draws=K: the share of eval episodes the base solves in any of K draws",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", help=f"suite name: {', '.join(SUITES)}")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the suite's config")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(help_requested=bool({"-h", "--help"} & set(words))).parse_args(words)
    from robopolicy.checkpoint import CheckpointError
    from robopolicy.config import ConfigError
    from robopolicy.data.hdf5 import DatasetError
    from robopolicy.rl.finetune import RLDivergedError
    from robopolicy.training.bc import TrainingDivergedError

    try:
        args.func(args)
    except (
        CheckpointError,
        ConfigError,
        DatasetError,
        FileExistsError,
        FileNotFoundError,
        TrainingDivergedError,
        RLDivergedError,
        ValueError,
    ) as err:
        print(f"robopolicy {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
