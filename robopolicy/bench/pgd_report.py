"""The Markdown report of ``robopolicy bench pgd``: per dataset and agent, each arm's final
normalised return per seed, each guided lambda's paired difference from real and from unguided
data, the synthetic-data check, and the dynamics-error scaling table when one was run.

Kept apart from the bench's runs so that the question the bench asks (does guided beat both
controls, by how much, with what spread) reads in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robopolicy.bench.jobs import failure_lines
from robopolicy.bench.report import markdown_table

ARM_ORDER = ("real", "unguided", "guided", "unguided_oracle", "guided_oracle")


def arm_groups(entry: dict, agent: str) -> dict[str, list[dict]]:
    """label -> the agent's runs of that arm and lambda, arms in ``ARM_ORDER``, lambdas rising."""
    runs = [r for r in entry["runs"].values() if r["agent"] == agent]
    runs.sort(key=lambda r: (ARM_ORDER.index(r["arm"]), r["guidance"], r["seed"]))
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["label"], []).append(r)
    return groups


def paired_difference(runs: list[dict], baseline: list[dict]) -> tuple[float, float, int] | None:
    """Mean and std over seeds of (run - baseline) final normalised return, paired by seed."""
    base = {r["seed"]: r["final_normalized"] for r in baseline}
    diffs = [r["final_normalized"] - base[r["seed"]] for r in runs if r["seed"] in base]
    if not diffs:
        return None
    return float(np.mean(diffs)), float(np.std(diffs)), len(diffs)


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def _diff(d: tuple[float, float, int] | None) -> str:
    return "-" if d is None else f"{d[0]:+.1f} ± {d[1]:.1f} (n={d[2]})"


def _agents(entry: dict) -> list[str]:
    return list(dict.fromkeys(r["agent"] for r in entry["runs"].values()))


def _best_guided(groups: dict[str, list[dict]]) -> tuple[str, list[dict]] | None:
    guided = [(k, v) for k, v in groups.items() if v[0]["arm"] == "guided"]
    if not guided:
        return None
    return max(guided, key=lambda kv: np.mean([r["final_normalized"] for r in kv[1]]))


def summary_rows(results: dict) -> list[list[Any]]:
    """Per dataset and agent: real, unguided, the best guided lambda and its two differences."""
    rows = []
    for name, entry in results["datasets"].items():
        for agent in _agents(entry):
            groups = arm_groups(entry, agent)
            best = _best_guided(groups)
            real, unguided = groups.get("real", []), groups.get("unguided", [])
            if best is None:
                continue
            label, guided = best
            vs_real, vs_unguided = (
                paired_difference(guided, real),
                paired_difference(guided, unguided),
            )
            wins = all(d is not None and d[0] > 0 for d in (vs_real, vs_unguided))
            rows.append(
                [
                    name,
                    agent,
                    _spread([r["final_normalized"] for r in real]) if real else "-",
                    _spread([r["final_normalized"] for r in unguided]) if unguided else "-",
                    f"{_spread([r['final_normalized'] for r in guided])} (λ = "
                    f"{guided[0]['guidance']:g})",
                    _diff(vs_real),
                    _diff(vs_unguided),
                    "yes" if wins else "no",
                ]
            )
    return rows


def _agent_section(entry: dict, agent: str) -> list[str]:
    groups = arm_groups(entry, agent)
    rows = [
        [
            label,
            ", ".join(f"{r['final_normalized']:.1f}" for r in runs),
            _spread([r["final_normalized"] for r in runs]),
            f"{np.mean([r['minutes'] for r in runs]):.1f}",
        ]
        for label, runs in groups.items()
    ]
    lines = [
        f"### {agent}",
        "",
        markdown_table(["arm", "normalised return per seed", "mean ± std", "min/run"], rows),
        "",
    ]
    diffs = [
        [
            label,
            _diff(paired_difference(runs, groups.get("real", []))),
            _diff(paired_difference(runs, groups.get("unguided", []))),
        ]
        for label, runs in groups.items()
        if runs[0]["arm"] == "guided"
    ]
    if diffs:
        lines += [
            "Paired by seed (mean ± std of the per-seed differences):",
            "",
            markdown_table(["guided arm", "− real", "− unguided"], diffs),
            "",
        ]
    check = entry.get("synthetic_check", {}).get(agent)
    if check:
        lines += _check_lines(check)
    return lines


def _check_lines(check: dict) -> list[str]:
    rows = [
        [
            "unguided" if lam == "0" else f"guided λ = {lam}",
            f"{one['target_log_likelihood']:.2f}",
            *(
                [
                    f"{one['dynamics']['next_state_mse']:.4f}",
                    f"{one['dynamics']['next_state_nmse']:.4f}",
                    f"{one['dynamics']['reward_mse']:.4f}",
                ]
                if one["dynamics"]
                else ["n/a"] * 3
            ),
            f"{one['terminal_rate']:.3f}",
        ]
        for lam, one in check["by_guidance"].items()
    ]
    return [
        f"Synthetic data sampled for one target policy, {check['target_policy']} (same noise "
        f"seeds in every row); its log-likelihood of the real data: "
        f"{check['real_log_likelihood']:.2f} per step.",
        "",
        markdown_table(
            [
                "sampling",
                "target log-lik / step",
                "next-state MSE",
                "normalised MSE",
                "reward MSE",
                "terminal rate",
            ],
            rows,
        ),
        "",
    ]


def scaling_lines(table: list[dict]) -> list[str]:
    """The dynamics error of each trajectory model size and training budget."""
    rows = []
    for row in table:
        dyn = row["dynamics"] or {}
        rows.append(
            [
                row["dataset"],
                str(row["down_dims"]),
                f"{row['parameters'] / 1e6:.2f}M",
                row["steps"],
                f"{row['final_loss']:.3f}" if row["final_loss"] is not None else "-",
                f"{dyn['next_state_mse']:.4f}" if dyn else "n/a",
                f"{dyn['next_state_nmse']:.4f}" if dyn else "n/a",
                f"{dyn['reward_mse']:.4f}" if dyn else "n/a",
                f"{row['terminal_rate']:.4f}",
                f"{row['minutes']:.1f}",
            ]
        )
    return [
        "## Dynamics error against trajectory-model size and training steps",
        "",
        "Unguided samples of each model, each transition replayed in MuJoCo from its own state "
        "(normalised MSE: per dimension, in units of the true next state's variance); terminal "
        "rate: the share of synthetic transitions that end their episode.",
        "",
        markdown_table(
            [
                "dataset",
                "U-Net channels",
                "parameters",
                "train steps",
                "final loss",
                "next-state MSE",
                "normalised MSE",
                "reward MSE",
                "terminal rate",
                "train min",
            ],
            rows,
        ),
        "",
    ]


def report(results: dict) -> str:
    lines = [
        "# bench pgd: offline RL with real, unguided and policy-guided synthetic data",
        "",
        f"Machine: {results['machine'].get('cpu')}; settings: {results['settings']}",
        "",
    ]
    summary = summary_rows(results)
    if summary:
        lines += [
            "## Summary: the best guided λ of each dataset and agent (final normalised return)",
            "",
            markdown_table(
                [
                    "dataset",
                    "agent",
                    "real",
                    "unguided",
                    "best guided",
                    "guided − real",
                    "guided − unguided",
                    "guided > both",
                ],
                summary,
            ),
            "",
        ]
    if results.get("scaling"):
        lines += scaling_lines(results["scaling"])
    for name, entry in results["datasets"].items():
        if not entry["runs"]:
            continue
        refs = entry["references"] or {}
        lines += [
            f"## {name}",
            "",
            f"{entry['transitions']} transitions, mean episode return "
            f"{entry['dataset_return']:.1f}; references: random "
            f"{refs.get('random', float('nan')):.1f}, expert "
            f"{refs.get('expert', float('nan')):.1f} ({refs.get('expert_source')}).",
            "",
        ]
        for agent in _agents(entry):
            lines += _agent_section(entry, agent)
        lines += [f"![{name}]({name}.png)", ""]
    return "\n".join(lines + failure_lines(results["datasets"]))
