"""What a finetune run has recorded, read back from a checkpoint: the evals that led to it, its
wall clock and, for a run that already ran its budget, its final result. A resumed run (or a
resumed bench) then reports the whole run, not only the part after the resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robopolicy.checkpoint import (
    CheckpointError,
    read_meta,
    resolve_checkpoint,
    training_state_json,
)

EVAL_PREFIX = "eval/"


def saved_history(checkpoint: Path) -> list[dict[str, Any]]:
    """The eval rows that led to ``checkpoint``, as its training state keeps them; for
    checkpoints saved before it kept them, read back from the run's ``metrics.jsonl``."""
    return recorded_history(resolve_checkpoint(checkpoint), training_state_json(checkpoint))


def recorded_history(checkpoint: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The eval rows of the (resolved) ``checkpoint`` whose training state is ``state``, for a
    caller that has read that state already."""
    if "history" in state:
        return state["history"]
    return eval_history(checkpoint.parent.parent, int(read_meta(checkpoint)["step"]))


def eval_history(run_dir: Path, up_to: int) -> list[dict[str, Any]]:
    """The eval rows of ``metrics.jsonl`` at env steps ``<= up_to``, one per env step, the last
    written winning: a process killed after its last checkpoint evaluated steps that the
    resumed process evaluates again. Exact where evals fall on the same env steps in every
    process (residual RL's fixed grid); DSRL's chunks end early with episodes, so a killed
    process's eval steps can differ and its rows stay in (the reason checkpoints now keep
    their own history)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # cut short by a kill mid-write: that row is lost
            print(f"[run record] {path}, line {number}: not JSON, skipped")
            continue
        evals = {k[len(EVAL_PREFIX) :]: v for k, v in row.items() if k.startswith(EVAL_PREFIX)}
        if evals and row["step"] <= up_to:
            by_step[row["step"]] = {"env_steps": row["step"], **evals}
    return [by_step[step] for step in sorted(by_step)]


def eval_score(row: dict[str, Any]) -> tuple[float, float]:
    """How evals rank: success first, mean return between equal successes (and alone on tasks
    without a success signal, whose success is always 0; rows logged without it count 0)."""
    return (float(row["success_rate"]), float(row.get("mean_return", 0.0)))


def best_eval(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The earliest of the best-scoring evals (None before any): the one ``checkpoints/best``
    holds the actor of."""
    best = None
    for row in history:
        if best is None or eval_score(row) > eval_score(best):
            best = row
    return best


def finished_result(checkpoint: Path) -> dict[str, Any]:
    """The result of a run whose ``checkpoint`` is its last (the budget ran out): its final
    eval (``eval-<step>/eval.json``), eval history and wall time, as ``finetune`` returns them."""
    checkpoint = resolve_checkpoint(checkpoint)
    run_dir = checkpoint.parent.parent
    step = int(read_meta(checkpoint)["step"])
    final_file = run_dir / f"eval-{step:07d}" / "eval.json"
    if not final_file.is_file():
        raise CheckpointError(
            f"{checkpoint} ends the run, but its final eval {final_file} is missing"
        )
    state = training_state_json(checkpoint)
    history = recorded_history(checkpoint, state)
    # summed over the processes whose work led here; None where checkpoints kept no clock yet
    seconds = state["counters"].get("seconds")
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "final": json.loads(final_file.read_text()),
        "history": history,
        "best": best_eval(history),
        "minutes": None if seconds is None else seconds / 60,
        "session_minutes": 0.0,
        "env_steps": step,
        "start_env_steps": step,
    }
