"""Offscreen rendering backend for MuJoCo.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` once, when ``mujoco`` is first imported, and
PyOpenGL picks its platform from ``PYOPENGL_PLATFORM`` the same way. A mismatch between the two, or
a backend whose library is missing, is the most common headless-rendering failure in robot learning
codebases. So the choice is made here, before anything imports mujoco:

1. the user's own ``MUJOCO_GL`` always wins;
2. otherwise EGL, which renders on the GPU where there is one and on Mesa's llvmpipe elsewhere;
3. otherwise OSMesa (Debian ``libosmesa6``);
4. otherwise rendering is disabled, and the first attempt to render says what to install.

Import this module (``envs`` does) before importing ``mujoco``.
"""

from __future__ import annotations

import atexit
import ctypes.util
import os
import sys
import weakref

_INSTALL_HINT = (
    "No working OpenGL backend for MuJoCo offscreen rendering. Install one of:\n"
    "  EGL (GPU driver, or Mesa: `apt-get install libegl1 libgl1-mesa-dri`) and set MUJOCO_GL=egl\n"
    "  OSMesa (`apt-get install libosmesa6`) and set MUJOCO_GL=osmesa\n"
    "State observations (obs_type='state') need no rendering."
)


def _egl_works() -> bool:
    """True when libEGL is present. MuJoCo opens it through the EGL device extension, which
    finds the GPU where there is one and Mesa's llvmpipe elsewhere; a broken driver is reported
    by ``make_renderer`` with the install hint."""
    return ctypes.util.find_library("EGL") is not None


def _osmesa_works() -> bool:
    return ctypes.util.find_library("OSMesa") is not None


def choose_gl_backend() -> str:
    """Set MUJOCO_GL and PYOPENGL_PLATFORM consistently and return the backend name.

    Must run before ``mujoco`` is imported; later calls return the choice already made.
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not chosen:
        if "mujoco" in sys.modules:
            # Too late to choose: mujoco already imported with its own default (GLFW).
            return "glfw"
        if _egl_works():
            chosen = "egl"
        elif _osmesa_works():
            chosen = "osmesa"
        else:
            chosen = "disabled"
        os.environ["MUJOCO_GL"] = chosen
    if chosen in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    return chosen


BACKEND = choose_gl_backend()


_LIVE_RENDERERS: weakref.WeakSet = weakref.WeakSet()


def _close_live_renderers() -> None:
    """Free GL contexts before mujoco's own exit hook terminates the EGL display; freed later,
    in interpreter teardown, they raise spurious EGL errors from ``Renderer.__del__``."""
    for renderer in list(_LIVE_RENDERERS):
        renderer.close()


class RenderingUnavailableError(RuntimeError):
    """Raised when an image is asked for and no OpenGL backend works."""


def make_renderer(model, height: int, width: int):
    """A ``mujoco.Renderer`` for ``model``, or a clear error saying what to install.

    The model's offscreen buffer is grown when the image is larger than the MJCF declares, so
    image size stays a constructor argument of the env rather than a property of the asset.
    """
    import mujoco

    if BACKEND in ("disabled", "off", "false", "0"):
        raise RenderingUnavailableError(_INSTALL_HINT)
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    try:
        renderer = mujoco.Renderer(model, height=height, width=width)
    except Exception as err:  # mujoco raises plain Exception/RuntimeError from the GL layer
        raise RenderingUnavailableError(
            f"MuJoCo could not create a {BACKEND!r} GL context ({err}).\n{_INSTALL_HINT}"
        ) from err
    _LIVE_RENDERERS.add(renderer)
    # mujoco registers its EGL display teardown when the first context is made; re-registering
    # ours afterwards makes it run first (atexit is last-in, first-out).
    atexit.unregister(_close_live_renderers)
    atexit.register(_close_live_renderers)
    return renderer


def gl_renderer_name(renderer) -> str:
    """The OpenGL renderer string of ``renderer``'s context, e.g. "NVIDIA H100 80GB HBM3/PCIe"
    or "llvmpipe (LLVM 15.0.6, 256 bits)": says whether frames come from a GPU or from the CPU."""
    from OpenGL import GL

    renderer._gl_context.make_current()  # mujoco.Renderer keeps its context private
    return GL.glGetString(GL.GL_RENDERER).decode()
