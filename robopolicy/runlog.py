"""Run logs shared by every training loop: ``metrics.jsonl`` (one JSON object per line, easy to
plot or grep) and TensorBoard, with the same keys."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from robopolicy.checkpoint import saved_steps


class RunLogger:
    """``metrics.jsonl`` (one JSON object per line) and TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / "metrics.jsonl"
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


def make_run_dir(run_dir: str | None, name: str, resume_from: Path | None) -> Path:
    """``run_dir``, or ``runs/<name>/<timestamp>``; a resumed run keeps its checkpoint's run."""
    if resume_from is not None:
        return resume_from.parent.parent
    path = Path(run_dir or Path("runs") / name / time.strftime("%Y%m%d-%H%M%S"))
    earlier = saved_steps(path)
    if earlier:
        # A fresh run would overwrite them step by step: refuse rather than lose that run.
        raise FileExistsError(
            f"run_dir {path} already holds checkpoints of another run (newest: "
            f"{earlier[-1].name}); continue it with resume={path}, or choose a new run_dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
