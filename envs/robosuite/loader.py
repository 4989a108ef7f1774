"""Importing robosuite quietly, offline, and with an error that says what to install.

robosuite 1.5 logs warnings on import (no private macro file, no ``robosuite_models``, no mink
IK) and an INFO line for every controller config it loads. None of them concern the single-arm
Panda tasks used here, and they would bury the CLI's own output, so they are filtered while
robosuite imports and its console logging is raised to WARNING afterwards. Nothing here
downloads anything: the import only reads robosuite's bundled assets.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

# Chooses MUJOCO_GL / PYOPENGL_PLATFORM before robosuite imports mujoco.
from robopolicy.sim import render as _render  # noqa: F401  isort: skip

ROBOSUITE_VERSION = "1.5.2"
_LOGGER_NAME = "robosuite_logs"  # robosuite.utils.log_utils.DefaultLogger's logger


class RobosuiteMissingError(ImportError):
    """robosuite is not installed (or not the version this adapter was written for)."""


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def import_robosuite() -> ModuleType:
    """``import robosuite``, without its import-time chatter; a clear error when it is missing."""
    logger = logging.getLogger(_LOGGER_NAME)
    logger.addFilter(_below_error)
    try:
        robosuite = importlib.import_module("robosuite")
    except ImportError as err:
        raise RobosuiteMissingError(
            f"the robosuite tasks need robosuite=={ROBOSUITE_VERSION} "
            f"(`pip install robosuite=={ROBOSUITE_VERSION}`): {err}"
        ) from err
    finally:
        logger.removeFilter(_below_error)
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        handler.setLevel(logging.WARNING)
    major_minor = ".".join(robosuite.__version__.split(".")[:2])
    if major_minor != "1.5":
        raise RobosuiteMissingError(
            f"the robosuite tasks need robosuite=={ROBOSUITE_VERSION}, found "
            f"{robosuite.__version__} (`pip install robosuite=={ROBOSUITE_VERSION}`)"
        )
    return robosuite
