"""OmegaConf configs: YAML files checked against dataclass schemas.

A config file may list other files under ``defaults`` (paths relative to ``configs/``, without
``.yaml``); they are merged first, in order, then the file itself, then ``key=value`` overrides
from the command line. The result is validated against the schema: an unknown key or a value
of the wrong type is an error that names the key and the file. No ``eval`` resolvers, no
``_target_`` indirection.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config defaults form a cycle: {' -> '.join(map(str, (*seen, path)))}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse {path}: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(cfg).__name__}")
    defaults = cfg.pop("defaults", [])
    merged = OmegaConf.create()
    for name in defaults:
        merged = OmegaConf.merge(merged, _read_yaml(CONFIG_DIR / f"{name}.yaml", (*seen, path)))
    return OmegaConf.merge(merged, cfg)


def load_config(path: str | Path | None, schema: type[T], overrides: list[str] | None = None) -> T:
    """Read ``path`` (with its defaults), apply ``overrides``, validate against ``schema``.

    ``path`` None starts from the schema's defaults (the overrides must then fill it).

    Returns an OmegaConf-backed instance of the dataclass ``schema`` (typed attribute access;
    ``OmegaConf.to_yaml`` saves it with the run).
    """
    if not is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass, got {schema!r}")
    path = Path(path) if path is not None else Path("<command line>")
    raw = _read_yaml(path) if str(path) != "<command line>" else OmegaConf.create()
    structured = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(structured, raw)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_describe(err)}") from err
    for override in overrides or []:
        apply_override(merged, override)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{path}: required keys not set: {missing}")
    return merged  # type: ignore[return-value]


def apply_override(cfg: Any, override: str) -> None:
    """Set one ``key=value`` in place.

    Applied key by key (not merged as a dict) so that list items can be addressed by index,
    e.g. ``tasks.0.checkpoint=runs/x``; the value is parsed as in a YAML file.
    """
    key, sep, raw_value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad command-line override {override!r}: expected key=value")
    try:
        value = OmegaConf.from_dotlist([f"value={raw_value}"])["value"]
        OmegaConf.update(cfg, key.strip(), value, merge=True)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        raise ConfigError(f"command-line override {override!r}: {_describe(err)}") from err


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: Any) -> dict[str, Any]:
    """An OmegaConf node, a plain dataclass instance or a dict as a plain dict."""
    if isinstance(cfg, dict):
        return dict(cfg)
    if not OmegaConf.is_config(cfg) and is_dataclass(cfg):
        return asdict(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _describe(err: Exception) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"key {key!r}: {msg}" if key else msg
