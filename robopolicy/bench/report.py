"""Where a benchmark's results go: one timestamped folder with JSON, Markdown and plots."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from robopolicy import __version__
from robopolicy.files import atomic_write_json, atomic_write_text
from robopolicy.provenance import git_commit


def new_run_dir(root: str | Path, suite: str) -> Path:
    """A folder of this run's own, named by the time: benches started in the same second (one
    per seed, say) get ``-2``, ``-3``, ... rather than overwriting each other's results."""
    stamp = Path(root) / suite / time.strftime("%Y%m%d-%H%M%S")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        out = stamp if attempt == 1 else stamp.with_name(f"{stamp.name}-{attempt}")
        try:
            out.mkdir()  # atomic: exactly one process creates each name
        except FileExistsError:
            continue
        return out
    raise RuntimeError(f"{stamp}: no free run folder name after 999 tries")


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "robopolicy": __version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """The report's opening words on where it ran: ``machine_info()``'s CPU, torch, commit and
    date, so that every figure can be traced to a machine and a commit."""
    m = machine
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}; commit "
        f"{m['git_commit']}; {m['date']}."
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any], report_md: str) -> None:
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", report_md)
