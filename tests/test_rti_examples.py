"""Every RTI example a newcomer reads names its cold start: without
``execution.rti_cold_start_steps`` an episode's first chunk runs the full 100-step chain, which
costs 5.6 network evaluations per action on Lift at K' = 3 instead of the 2.2 quoted at K' = 2
with a DDIM-10 cold start (docs/benchmarks/rti.md)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from robopolicy.cli import EPILOG
from robopolicy.config import load_config
from robopolicy.sim.evaluate import EvalConfig

REPO = Path(__file__).resolve().parents[1]


def rti_examples() -> list[tuple[str, list[str]]]:
    """(where, words) of each command line in the README and ``--help`` that selects RTI."""
    found = []
    for where, text in (("README.md", (REPO / "README.md").read_text()), ("--help", EPILOG)):
        for line in text.replace("\\\n", " ").splitlines():
            command = line.split("#")[0]
            if "execution.mode=rti" in command:
                found.append((where, shlex.split(command)))
    return found


def test_the_readme_and_help_show_rti() -> None:
    assert {where for where, _ in rti_examples()} == {"README.md", "--help"}


@pytest.mark.parametrize("where,words", rti_examples(), ids=lambda x: str(x)[:40])
def test_rti_example_names_its_cold_start(where: str, words: list[str]) -> None:
    execution = [w for w in words if w.startswith("execution.")]
    assert any(w.startswith("execution.rti_cold_start_steps=") for w in execution), (
        f"{where}: `{' '.join(words)}` leaves the cold start out"
    )
    load_config(None, EvalConfig, ["checkpoint=RUN", *execution])  # the keys exist
