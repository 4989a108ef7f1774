"""Run logs shared by every training loop: ``metrics.jsonl`` (one JSON object per line, easy to
plot or grep) and TensorBoard, with the same keys."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from robopolicy.checkpoint import checkpoint_run, saved_steps
from robopolicy.config import ConfigError
from robopolicy.files import atomic_write_text


class RunLogger:
    """``metrics.jsonl`` (one JSON object per line) and TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int | None = None) -> None:
        """``resumed_at``: the step of the checkpoint a run goes on from in its own folder;
        rows logged after it (by a process killed before its next checkpoint) are dropped, as
        the resumed run logs those steps again."""
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / "metrics.jsonl"
        if resumed_at is not None and path.is_file():
            _drop_rows_after(path, resumed_at)
        cut_short = _ends_mid_line(path)
        self.jsonl = path.open("a")
        if cut_short:  # a kill mid-write: the rows appended now start on a line of their own
            self.jsonl.write("\n")
        self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, prefix: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{f"{prefix}/{k}": v for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a row cut short by a kill goes too)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as file:
        file.seek(-1, 2)
        return file.read(1) != b"\n"


def eval_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "success_rate": summary["success_rate"],
        "success_ci_low": summary["success_ci95"][0],
        "success_ci_high": summary["success_ci95"][1],
        "mean_return": summary["mean_return"],
        "n_episodes": summary["n_episodes"],
        "time_per_action_ms": summary["time_per_action_ms"],
    }


def plan_run_dir(run_dir: str | None, name: str, resume_from: Path | None) -> Path:
    """Where a run writes, chosen and checked before anything is created (a run that fails
    to start leaves no folder behind: the caller creates it once the run is set up).

    - A fresh run: ``run_dir``, or ``runs/<name>/<timestamp>``; refused where checkpoints of
      another run already are.
    - A resume with ``run_dir`` unset (or naming the checkpoint's run): the checkpoint's run,
      which must be the run's newest checkpoint: going on from an older one would overwrite
      the newer ones step by step and mix two lineages in ``metrics.jsonl``.
    - A resume with another ``run_dir``: a branch, a new run that starts from the checkpoint
      (its config records that parent as ``resume``); the only way to go on from a checkpoint
      outside a run's ``checkpoints/`` folder, whose parent folders are nobody's run.
    """
    if resume_from is not None:
        home = checkpoint_run(resume_from)
        in_place = run_dir is None or (
            home is not None and Path(run_dir).resolve() == home.resolve()
        )
        if in_place:
            if home is None:
                raise ConfigError(
                    f"{resume_from} is not inside a run's checkpoints/ folder: set "
                    "run_dir=<new folder> for the resumed run"
                )
            newer = [p.name for p in saved_steps(home) if int(p.name) > int(resume_from.name)]
            if newer:
                raise FileExistsError(
                    f"resuming {resume_from} in its run {home} would overwrite its newer "
                    f"checkpoints {newer}: resume from the newest "
                    f"({home / 'checkpoints' / newer[-1]}), or branch off into a new folder with "
                    "run_dir=<new folder>"
                )
            return home
    path = Path(run_dir or Path("runs") / name / time.strftime("%Y%m%d-%H%M%S"))
    earlier = saved_steps(path)
    if earlier:
        # A new run would overwrite them step by step: refuse rather than lose that run.
        raise FileExistsError(
            f"run_dir {path} already holds checkpoints of another run (newest: "
            f"{earlier[-1].name}); continue it with resume={path}, or choose a new run_dir"
        )
    return path


def resumed_in_place(run_dir: Path, resume_from: Path | None) -> int | None:
    """The step of the checkpoint a run goes on from in its own folder; None for a new run or
    a branch (``RunLogger``'s ``resumed_at``)."""
    if resume_from is None or checkpoint_run(resume_from) != run_dir:
        return None
    return int(resume_from.name)


def make_run_dir(run_dir: str | None, name: str, resume_from: Path | None) -> Path:
    """``plan_run_dir``, created at once (for loops with nothing to set up first)."""
    path = plan_run_dir(run_dir, name, resume_from)
    path.mkdir(parents=True, exist_ok=True)
    return path
