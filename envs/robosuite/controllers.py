"""Controller configs: robosuite 1.4's part configs, as published robomimic datasets store
them, turned into robosuite 1.5's composite configs.

robosuite 1.4 took one arm controller config, e.g. ``{"type": "OSC_POSE", "kp": 150,
"damping": 1, "control_delta": true, ...}``. robosuite 1.5 takes a composite config,
``{"type": "BASIC", "body_parts": {"right": {..., "gripper": {"type": "GRIP"}}}}``, and renamed
three keys on the way (``damping`` -> ``damping_ratio``, ``damping_limits`` ->
``damping_ratio_limits``, ``control_delta`` -> ``input_type``). robosuite 1.5 silently ignores
the old names, so a converted config that kept them would run with default gains: they are
renamed here instead.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

_RENAMED_KEYS = {"damping": "damping_ratio", "damping_limits": "damping_ratio_limits"}


class ControllerConfigError(ValueError):
    """A controller config that robosuite 1.5 cannot run; the message names the bad key."""


def is_part_config(config: Mapping[str, Any]) -> bool:
    """A robosuite 1.4 single-part config (no ``body_parts``)."""
    return "body_parts" not in config


def part_to_composite(part: Mapping[str, Any], arms: Collection[str] = ("right",)) -> dict:
    """The robosuite 1.5 composite config that runs robosuite 1.4's ``part`` config on ``arms``
    with a plain open/close gripper (what robosuite 1.4 attached implicitly). The part types
    kept their names in 1.5, so ``to_composite`` checks them after the conversion."""
    arm = {_RENAMED_KEYS.get(key, key): copy.deepcopy(value) for key, value in part.items()}
    if "control_delta" in arm:
        arm["input_type"] = "delta" if arm.pop("control_delta") else "absolute"
    arm.setdefault("gripper", {"type": "GRIP"})
    return {"type": "BASIC", "body_parts": {name: copy.deepcopy(arm) for name in arms}}


def to_composite(
    config: Mapping[str, Any], composite_types: Collection[str], part_types: Collection[str]
) -> dict:
    """``config`` as a robosuite 1.5 composite config, converting a 1.4 part config; checks the
    controller types against robosuite's registries (``composite_types``, ``part_types``)."""
    if not isinstance(config, Mapping):
        raise ControllerConfigError(f"controller_configs must be a JSON object, got {config!r}")
    composite = part_to_composite(config) if is_part_config(config) else copy.deepcopy(dict(config))
    if composite.get("type") not in composite_types:
        raise ControllerConfigError(
            f"composite controller type {composite.get('type')!r} is not in robosuite; "
            f"expected one of {sorted(composite_types)}"
        )
    body_parts = composite.get("body_parts")
    if not isinstance(body_parts, Mapping) or not body_parts:
        raise ControllerConfigError("controller_configs['body_parts'] must name at least one part")
    for name, part in body_parts.items():
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in part_types:
            raise ControllerConfigError(
                f"controller_configs['body_parts'][{name!r}]['type'] is {kind!r}, which "
                f"robosuite lacks; expected one of {sorted(part_types)}"
            )
    return composite
