"""The constructor options every env here takes (the own MuJoCo tasks and the robosuite
adapter), checked one way so both refuse a bad value with the same message."""

from __future__ import annotations

OBS_TYPES = ("state", "pixels", "both")
REWARD_TYPES = ("sparse", "dense")


def check_env_options(obs_type: str, reward_type: str, render_mode: str | None, image_size) -> None:
    if obs_type not in OBS_TYPES:
        raise ValueError(f"unknown obs_type {obs_type!r}; expected one of {OBS_TYPES}")
    if reward_type not in REWARD_TYPES:
        raise ValueError(f"unknown reward_type {reward_type!r}; expected one of {REWARD_TYPES}")
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"unknown render_mode {render_mode!r}; expected None or 'rgb_array'")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
