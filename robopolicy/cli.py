"""``robopolicy <command> CONFIG [key=value ...]``: parse, then call one function.

Commands:
  collect CONFIG   run a scripted expert and write robomimic-format HDF5 demonstrations
  eval CONFIG      evaluate an agent on seeded episodes; write eval.json and a video
  bench SUITE      run a benchmark suite; write results.json, a Markdown report and plots
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from robopolicy import __version__

EPILOG = """examples:
  robopolicy collect configs/collect/lift_proficient.yaml n_demos=50
  robopolicy eval configs/eval/lift_expert.yaml n_episodes=100 noise=0.6
  robopolicy bench sim
Overrides are OmegaConf dot-list items (key=value, nested.key=value); unknown keys are errors."""


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


def _cmd_eval(args: argparse.Namespace) -> None:
    from robopolicy.config import load_config
    from robopolicy.sim.evaluate import EvalConfig, run_eval_config, summary_line

    cfg = load_config(args.config, EvalConfig, args.overrides)
    summary = run_eval_config(cfg)
    print(summary_line(summary) + f" -> {cfg.out_dir}/eval.json")


def _cmd_bench(args: argparse.Namespace) -> None:
    from robopolicy.bench import run_suite

    run_suite(args.suite, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robopolicy",
        description="Diffusion and flow-matching robot policies, and the RL that improves them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"robopolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, helptext in (
        ("collect", _cmd_collect, "collect expert demonstrations into robomimic HDF5"),
        ("eval", _cmd_eval, "evaluate an agent: success with a Wilson interval, video"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=func)
    p = sub.add_parser("bench", help="run a benchmark suite", description="run a benchmark suite")
    p.add_argument("suite", help="suite name: sim")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the suite's config")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robopolicy.config import ConfigError
    from robopolicy.data.hdf5 import DatasetError

    try:
        args.func(args)
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        print(f"robopolicy {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
