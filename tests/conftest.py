"""Shared fixtures. Tests run on the CPU; rendering uses EGL on Mesa llvmpipe where no GPU."""

from __future__ import annotations

import pytest

import robopolicy  # noqa: F401  (registers the tasks)
from envs import TASKS


@pytest.fixture(params=sorted(TASKS))
def env_id(request) -> str:
    return request.param
