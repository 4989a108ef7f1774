"""The examples in ``robopolicy --help`` run as written: every config file they name exists and
loads, with the example's own overrides, into its command's schema (an example that names a
missing file or key would fail a newcomer on their first try)."""

from __future__ import annotations

import argparse
import importlib
import shlex
from pathlib import Path

import pytest

from robopolicy.bench import SUITES
from robopolicy.cli import KEYS_HELP, build_parser
from robopolicy.config import CONFIG_DIR, load_config

REPO = Path(__file__).resolve().parents[1]

# (command words) -> the schema its CONFIG argument fills
SCHEMAS = {
    ("collect",): "robopolicy.sim.collect:CollectConfig",
    ("train",): "robopolicy.training.config:TrainConfig",
    ("finetune",): "robopolicy.rl.config:FinetuneConfig",
    ("eval",): "robopolicy.sim.evaluate:EvalConfig",
    ("offline-data",): "robopolicy.synth.make_data:OfflineDataConfig",
    ("synth", "train"): "robopolicy.synth.config:SynthConfig",
    ("offline",): "robopolicy.offline.config:OfflineConfig",
}


def help_texts() -> list[str]:
    """The main epilog and every sub-command's description and epilog."""
    parser = build_parser()
    texts = [parser.epilog or ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += [sub.description or "", sub.epilog or ""]
    return texts


def examples() -> list[list[str]]:
    """Each ``robopolicy ...`` example as its words, continuation lines joined."""
    found = []
    for text in help_texts():
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("robopolicy "):
                found.append(shlex.split(line)[1:])
    return found


def schema_for(words: list[str]):
    for prefix, target in SCHEMAS.items():
        if tuple(words[: len(prefix)]) == prefix:
            module, name = target.split(":")
            return getattr(importlib.import_module(module), name), words[len(prefix) :]
    return None, words


def concrete(overrides: list[str]) -> list[str]:
    """Overrides that name no placeholder such as ``<time>`` or ``RUN``."""
    return [o for o in overrides if "<" not in o and "RUN" not in o]


def test_help_has_examples_of_the_main_commands():
    commands = {words[0] for words in examples()}
    assert {"collect", "train", "finetune", "eval", "bench", "offline"} <= commands


@pytest.mark.parametrize("words", examples(), ids=lambda w: " ".join(w)[:60])
def test_help_example_config_loads(words, monkeypatch):
    monkeypatch.chdir(REPO)
    if words[0] == "bench":
        suite, overrides = words[1], concrete(words[2:])
        assert suite in SUITES, f"example names an unknown suite {suite!r}"
        schema = importlib.import_module(SUITES[suite]).Config
        load_config(CONFIG_DIR / "bench" / f"{suite}.yaml", schema, overrides)
        return
    schema, rest = schema_for(words)
    if schema is None or not rest or not rest[0].startswith("configs/"):
        pytest.skip("the example's target is a run or checkpoint made by an earlier command")
    config, overrides = rest[0], concrete(rest[1:])
    assert (REPO / config).is_file(), f"`robopolicy {' '.join(words)}` names a missing {config}"
    load_config(config, schema, overrides)


def _has_key(schema: type, dotted: str) -> bool:
    """``dotted`` names a field of the dataclass ``schema`` (through nested dataclasses; any
    key below a dict field)."""
    import dataclasses
    import typing

    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(schema)}
    if head not in names:
        return False
    if not rest:
        return True
    hint = typing.get_type_hints(schema)[head]
    if dataclasses.is_dataclass(hint):
        return _has_key(hint, rest)
    return typing.get_origin(hint) is dict or "dict" in str(hint)


@pytest.mark.parametrize("command", sorted(KEYS_HELP))
def test_help_names_real_keys_and_the_schema(command):
    schema_path, keys = KEYS_HELP[command]
    module, _, name = schema_path.split()[0].rpartition(".")
    schema = getattr(importlib.import_module(module), name)
    assert [key for key in keys if not _has_key(schema, key)] == []
    parser_help = next(
        action.choices[command].format_help()
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert "main keys:" in parser_help and name in parser_help
