"""``robopolicy bench robosuite``: the field's benchmark tasks (robomimic's Lift, Can and Square
on robosuite 1.5), each of our figures beside the published one for the same task and method.

The bench is four sections (``sections``), each the suite of the same name run on robosuite
configs, its own results in a subfolder of this bench's folder:

- ``bc``: diffusion and flow policies (state) trained on the scripted demos and evaluated
  (``robopolicy bench bc``'s runs);
- ``rti``: execution schemes on the ``bc`` section's diffusion checkpoints (an RTI task named
  like a ``bc`` run takes its checkpoint), and per task the fewest network evaluations per
  action whose success is within ``rti_tolerance`` of the full chain (``robopolicy bench rti``);
- ``rl``: residual RL and DSRL from a scarce-data base (``robopolicy bench residual``'s runs);
- ``throughput``: what the adapter adds to robosuite's ``env.step`` (same process, interleaved),
  and evaluation episodes per minute on one env against a vector env of ``num_envs`` workers.

``published`` holds the papers' figures, keyed by section and row (``bc``: the run name;
``rti`` and ``rl``: ``<task>/<scheme or method>``), each with its source and what differs; the
report prints them beside our rows. ``resume=<folder>`` runs the sections asked for into an
earlier robosuite bench and keeps the sections it does not rerun.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.bench import bc as bench_bc
from robopolicy.bench import rl as bench_rl
from robopolicy.bench import rti as bench_rti
from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import (
    machine_info,
    machine_line,
    markdown_table,
    new_run_dir,
    write_results,
)
from robopolicy.checkpoint import load_policy, read_config
from robopolicy.config import ConfigError
from robopolicy.distributed import RayConfig
from robopolicy.sim.agents import PolicyAgent
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.vector import make_env

SECTIONS = ("bc", "rti", "rl", "throughput")


@dataclass
class Published:
    figure: str  # the number as the paper gives it
    source: str  # paper, table or figure
    differs: str = ""  # what differs from our run (data, budget, observations)


@dataclass
class ThroughputConfig:
    envs: list[str] = field(default_factory=lambda: ["Lift", "PickPlaceCan", "NutAssemblySquare"])
    rounds: int = 20  # interleaved rounds of robosuite's step and the adapter's
    steps: int = 50  # steps per round
    target_ratio: float = 1.10  # the adapter may cost at most 10% of robosuite's step
    eval_run: str = ""  # a bc run whose checkpoint is evaluated on 1 env and on num_envs
    eval_episodes: int = 10
    num_envs: int = 2


@dataclass
class Config:
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    bc: bench_bc.Config = field(default_factory=bench_bc.Config)
    rti: bench_rti.Config = field(default_factory=bench_rti.Config)
    rti_tolerance: float = 0.05  # "equal success": within 5 points of the reference scheme
    rl: bench_rl.Config = field(default_factory=bench_rl.Config)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    published: dict[str, dict[str, Published]] = field(default_factory=dict)
    out_root: str = "runs/bench"
    resume: str = ""  # an earlier robosuite bench's folder to add these sections to
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # the bc and rl sections may run on Ray (executor=ray)
    ray: RayConfig = field(default_factory=RayConfig)


def run(cfg: Config) -> dict[str, Any]:
    unknown = sorted(set(cfg.sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"sections: {unknown} unknown; choose from {list(SECTIONS)}")
    if "rti" in cfg.sections or "throughput" in cfg.sections:
        local_only(cfg.executor, "robosuite (its rti and throughput sections)")
    out = Path(cfg.resume) if cfg.resume else new_run_dir(cfg.out_root, "robosuite")
    results = _read_earlier(out) if cfg.resume else {"suite": "robosuite", "sections": {}}
    results["machine"] = machine_info()
    for section in [s for s in SECTIONS if s in cfg.sections]:  # bc before rti and throughput
        print(f"[bench robosuite] section {section}")
        results["sections"][section] = _SECTION_RUNNERS[section](cfg, out, results["sections"])
        write_results(out, results, _report(results, cfg))
    write_results(out, results, _report(results, cfg))
    print(f"[bench robosuite] wrote {out}/report.md")
    return results


def _read_earlier(out: Path) -> dict[str, Any]:
    path = out / "results.json"
    if not path.is_file():
        raise ConfigError(f"resume={out}: no results.json of a robosuite bench there")
    results = json.loads(path.read_text())
    if results.get("suite") != "robosuite":
        raise ConfigError(f"resume={out}: results.json is of suite {results.get('suite')!r}")
    return results


def _run_bc(cfg: Config, out: Path, done: dict) -> dict[str, Any]:
    cfg.bc.out_root = str(out)
    cfg.bc.executor, cfg.bc.ray = cfg.executor, cfg.ray
    return bench_bc.run(cfg.bc)


def _run_rti(cfg: Config, out: Path, done: dict) -> dict[str, Any]:
    trained = done.get("bc", {}).get("runs", {})
    for task in cfg.rti.tasks:
        if task.checkpoint is None and task.name in trained:
            task.checkpoint = trained[task.name]["checkpoint"]
    cfg.rti.out_root = str(out)
    results = bench_rti.run(cfg.rti)
    results["cheapest_within_tolerance"] = {
        name: _cheapest(task["rows"], cfg.rti.reference, cfg.rti_tolerance)
        for name, task in results["tasks"].items()
    }
    return results


def _cheapest(rows: dict[str, dict], reference: str, tolerance: float) -> dict[str, Any]:
    """The scheme with the fewest network evaluations per action whose success is within
    ``tolerance`` of the reference's (the reference itself if none is cheaper)."""
    floor = rows[reference]["success_rate"] - tolerance - 1e-9
    fits = [(r["network_evaluations_per_action"], name) for name, r in rows.items()]
    nfe, name = min((n, s) for n, s in fits if rows[s]["success_rate"] >= floor)
    return {"scheme": name, "nfe_per_action": nfe, "success_rate": rows[name]["success_rate"]}


def _run_rl(cfg: Config, out: Path, done: dict) -> dict[str, Any]:
    cfg.rl.out_root = str(out)
    cfg.rl.executor, cfg.rl.ray = cfg.executor, cfg.ray
    return bench_rl.run(cfg.rl)


def _run_throughput(cfg: Config, out: Path, done: dict) -> dict[str, Any]:
    tp = cfg.throughput
    results: dict[str, Any] = {"step_overhead": {}, "settings": {"rounds": tp.rounds}}
    for name in tp.envs:
        row = step_overhead(f"robosuite/{name}-v0", tp.rounds, tp.steps)
        row["within_target"] = row["ratio"] <= tp.target_ratio
        results["step_overhead"][name] = row
        print(f"  {name}: adapter/robosuite step time {row['ratio']:.3f}")
    trained = done.get("bc", {}).get("runs", {})
    if tp.eval_run:
        if tp.eval_run not in trained:
            raise ConfigError(
                f"throughput.eval_run={tp.eval_run!r} is not a run of the bc section "
                f"(it has {sorted(trained)}); run the bc section first"
            )
        results["eval"] = eval_speed(trained[tp.eval_run]["checkpoint"], tp)
    return results


def step_overhead(env_id: str, rounds: int, steps: int) -> dict[str, float]:
    """robosuite's own ``env.step`` and the adapter's on the same env in this process,
    interleaved in rounds (alternating which goes first, so that other load on the machine hits
    both alike); median seconds per step of each, and their ratio."""
    env = make_env(env_id).unwrapped
    raw = env.robosuite_env
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    times: dict[str, list[float]] = {"robosuite": [], "adapter": []}
    try:
        for i in range(rounds):
            order = [("robosuite", raw.step), ("adapter", env.step)]
            for label, step in order if i % 2 == 0 else order[::-1]:
                env.reset(seed=i)
                start = time.perf_counter()
                for _ in range(steps):
                    step(action)
                times[label].append((time.perf_counter() - start) / steps)
    finally:
        env.close()
    robosuite_ms = 1e3 * statistics.median(times["robosuite"])
    adapter_ms = 1e3 * statistics.median(times["adapter"])
    return {
        "robosuite_ms": robosuite_ms,
        "adapter_ms": adapter_ms,
        "ratio": adapter_ms / robosuite_ms,
    }


def eval_speed(checkpoint: str, tp: ThroughputConfig) -> dict[str, Any]:
    """Evaluation episodes per minute of one checkpoint on 1 env (in this process) and on a
    vector env of ``tp.num_envs`` worker processes, same seeds."""
    task = read_config(checkpoint)["task"]
    rows = {}
    for num_envs in (1, tp.num_envs):
        policy = load_policy(checkpoint)
        start = time.perf_counter()
        summary = evaluate(
            task["env_id"],
            PolicyAgent(policy),
            n_episodes=tp.eval_episodes,
            num_envs=num_envs,
            env_kwargs=task["env_kwargs"],
            progress=False,
        )
        seconds = time.perf_counter() - start
        steps = summary["mean_episode_length"] * summary["n_episodes"]
        rows[str(num_envs)] = {
            "episodes_per_min": 60 * summary["n_episodes"] / seconds,
            "env_steps_per_s": steps / seconds,
            "success_rate": summary["success_rate"],
            "seconds": seconds,
        }
        print(f"  eval on {num_envs} env(s): {rows[str(num_envs)]['episodes_per_min']:.1f} ep/min")
    speedup = rows[str(tp.num_envs)]["env_steps_per_s"] / rows["1"]["env_steps_per_s"]
    return {"checkpoint": checkpoint, "by_num_envs": rows, "speedup": speedup}


_SECTION_RUNNERS = {"bc": _run_bc, "rti": _run_rti, "rl": _run_rl, "throughput": _run_throughput}


# --- the report ---------------------------------------------------------------------------


def _report(results: dict[str, Any], cfg: Config) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark: robosuite (robomimic's Lift, Can, Square)",
        "",
        f"{machine_line(m)} Success over seeded episodes (from 100000) with a Wilson 95% interval. "
        "The published figures are context, not a like-for-like comparison: the column "
        "'what differs' says why.",
        "",
    ]
    sections = results["sections"]
    published = cfg.published
    if "bc" in sections:
        lines += _bc_lines(sections["bc"], published.get("bc", {}))
    if "rti" in sections:
        lines += _rti_lines(sections["rti"], published.get("rti", {}), cfg.rti_tolerance)
    if "rl" in sections:
        lines += _rl_lines(sections["rl"], published.get("rl", {}))
    if "throughput" in sections:
        lines += _throughput_lines(sections["throughput"], cfg.throughput)
    return "\n".join(lines)


def _beside(published: dict[str, Published], key: str) -> list[str]:
    paper = published.get(key)
    if paper is None:
        return ["—", "—", "—"]
    return [paper.figure, paper.source, paper.differs or "—"]


def _bc_lines(bc: dict[str, Any], published: dict[str, Published]) -> list[str]:
    rows = []
    for name, r in bc["runs"].items():
        low, high = r["success_ci95"]
        rows.append(
            [
                name,
                r["policy"],
                f"{r['success_rate']:.0%} [{low:.0%}, {high:.0%}]",
                r["n"],
                r["steps"],
                f"{r['train_minutes']:.1f}",
                *_beside(published, name),
            ]
        )
    headers = ["run", "policy", "success [Wilson 95%]", "n", "train steps", "train min"]
    headers += ["published", "source", "what differs"]
    return ["## BC (state observations)", "", markdown_table(headers, rows), ""]


def _rti_lines(rti: dict[str, Any], published: dict[str, Published], tol: float) -> list[str]:
    lines = ["## RTI: network evaluations per action at equal success", ""]
    rows = []
    for task, entry in rti["tasks"].items():
        for scheme, r in entry["rows"].items():
            low, high = r["success_ci95"]
            rows.append(
                [
                    task,
                    scheme,
                    f"{r['success_rate']:.0%} [{low:.0%}, {high:.0%}]",
                    f"{r['network_evaluations_per_action']:.2f}",
                    f"{r['latency_ms_p50']:.2f}",
                    *_beside(published, f"{task}/{scheme}"),
                ]
            )
    headers = ["task", "scheme", "success [Wilson 95%]", "NFE/action", "ms/action p50"]
    headers += ["published", "source", "what differs"]
    lines += [markdown_table(headers, rows), ""]
    for task, best in rti.get("cheapest_within_tolerance", {}).items():
        lines.append(
            f"- {task}: fewest NFE/action within {tol:.0%} of the reference: "
            f"{best['scheme']} ({best['nfe_per_action']:.2f}, success {best['success_rate']:.0%})"
        )
    return [*lines, ""]


def _rl_lines(rl: dict[str, Any], published: dict[str, Published]) -> list[str]:
    rows = []
    for task, entry in rl["tasks"].items():
        low, high = entry["base_ci95"]
        rows.append([task, "BC base", f"{entry['base_success']:.0%} [{low:.0%}, {high:.0%}]"])
        rows[-1] += ["-", "-", "-", *_beside(published, f"{task}/base")]
        for label in dict.fromkeys(key.split("/")[0] for key in entry["runs"]):
            runs = [r for key, r in entry["runs"].items() if key.split("/")[0] == label]
            finals = ", ".join(f"{r['final_success']:.0%}" for r in runs)
            reached = ", ".join(
                "never" if r["env_steps_to_target"] is None else str(r["env_steps_to_target"])
                for r in runs
            )
            minutes = ", ".join(
                "n/a" if r["minutes"] is None else f"{r['minutes']:.0f}" for r in runs
            )
            mean = float(np.mean([r["final_success"] for r in runs]))
            rows.append([task, label, f"{mean:.0%} (seeds: {finals})", len(runs), reached, minutes])
            rows[-1] += _beside(published, f"{task}/{label}")
    headers = ["task", "method", "final success", "seeds", "env steps to >= 90%", "wall min"]
    headers += ["published", "source", "what differs"]
    settings = rl.get("settings", {})
    note = (
        f"{settings.get('env_steps')} env steps per run, eval every {settings.get('eval_every')} "
        f"({settings.get('eval_episodes')} episodes), final eval of "
        f"{settings.get('final_eval_episodes')} episodes. Curves: rl/robosuite_rl/*/<task>.png."
    )
    return ["## RL from a scarce-data base", "", note, "", markdown_table(headers, rows), ""]


def _throughput_lines(tp: dict[str, Any], cfg: ThroughputConfig) -> list[str]:
    rows = [
        [
            name,
            f"{r['robosuite_ms']:.2f}",
            f"{r['adapter_ms']:.2f}",
            f"{r['ratio']:.3f}",
            "yes" if r["within_target"] else "NO",
        ]
        for name, r in tp["step_overhead"].items()
    ]
    headers = ["env", "robosuite step ms", "adapter step ms", "ratio", f"<= {cfg.target_ratio}"]
    lines = ["## Throughput", "", markdown_table(headers, rows), ""]
    if "eval" in tp:
        ev = tp["eval"]
        for num_envs, r in ev["by_num_envs"].items():
            lines.append(
                f"- eval on {num_envs} env(s): {r['episodes_per_min']:.1f} episodes/min, "
                f"{r['env_steps_per_s']:.0f} env steps/s"
            )
        lines.append(f"- vector env speed-up (env steps/s): {ev['speedup']:.2f}x")
    return [*lines, ""]
