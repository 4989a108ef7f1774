"""The observation and action guard between a policy and the world it acts on.

A finite observation can still poison a policy: float64 1e300 overflows to inf when cast to
the model's float32, and float32 3e38 or int64 2**62 are finite yet blow up in the
normaliser's affine map, so the network returns NaN (``clamp`` keeps NaN). Such an action must
never reach a robot or a simulator, and a planned chunk made of them must not serve the next
steps. So the guard checks two things, and every place that runs a policy on outside
observations (the policy server, plain and RL; ``ControlLoop``; in-process eval) uses it:

- observations *after* the cast to the model's dtype: finite, and within the normaliser's
  fitted range widened by ``margin`` (in normalised units: the training data lies within
  [-1, 1] under "limits" normalisation, within a few units under "gaussian"); outside it is an
  error or a logged warning, as ``action`` says;
- actions: finite, always (a ``NonFiniteActionError``; callers drop their action queues).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robopolicy.data.normalizer import Normalizer

log = logging.getLogger(__name__)

GUARD_ACTIONS = ("error", "warn")


@dataclass
class ObsGuardConfig:
    """``margin``: how far (normalised units) beyond the training range [-1, 1] an observation
    feature may lie; ``action``: ``warn`` (log it, act) or ``error`` (refuse the observation).

    ``warn`` is the default because a feature that barely varied in the demonstrations (a
    cube's quaternion over a few demos: range 1e-4) puts legitimate observations thousands of
    units out; ``error`` is the strict choice for a server facing untrusted clients. A
    non-finite action is refused either way.
    """

    margin: float = 10.0
    action: str = "warn"


class GuardError(ValueError):
    """An observation or action the guard refused (the message names key, feature and value)."""


class ObservationError(GuardError):
    """An observation that is not finite in the model's dtype, or far outside the training data."""


class NonFiniteActionError(GuardError):
    """The policy produced NaN or inf: the action is not sent, its chunk is dropped."""


def validate_guard_config(cfg: ObsGuardConfig) -> None:
    """Fail at start-up, not on the first observation, on a margin or action that cannot work."""
    if not isinstance(cfg.margin, int | float) or not np.isfinite(cfg.margin) or cfg.margin < 0:
        raise ValueError(f"obs_guard.margin must be a finite number >= 0, got {cfg.margin!r}")
    if cfg.action not in GUARD_ACTIONS:
        raise ValueError(f"obs_guard.action must be one of {GUARD_ACTIONS}, got {cfg.action!r}")


def check_actions(actions: Tensor | np.ndarray, what: str = "action") -> None:
    """Raise ``NonFiniteActionError`` unless every entry of ``actions`` is finite."""
    array = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise NonFiniteActionError(
            f"the policy produced a non-finite {what} ({bad} of {array.size} entries NaN or inf); "
            "it was not sent and the planned actions were dropped"
        )


class ObsGuard:
    """Checks observation tensors, already cast to the model's dtype, against ``normalizer``.

    Keys without statistics (images, which are uint8 and bounded) are not checked. In ``warn``
    mode each key's first out-of-range observation is logged and the rest only counted
    (``out_of_range``), so a long eval does not flood the log.
    """

    def __init__(self, normalizer: Normalizer | None, cfg: ObsGuardConfig) -> None:
        validate_guard_config(cfg)
        self.normalizer, self.cfg = normalizer, cfg
        self.keys = set(normalizer.keys) if normalizer is not None else set()
        self.out_of_range = 0
        self._warned: set[str] = set()

    def check_obs(self, obs: Mapping[str, Tensor]) -> None:
        for key, value in obs.items():
            if not value.is_floating_point():
                continue  # images: uint8, bounded by their type
            if not torch.isfinite(value).all():
                raise ObservationError(
                    f"observation {key!r} is not finite as {value.dtype} (NaN, inf, or a value "
                    "beyond the range of the model's dtype)"
                )
            if key in self.keys:
                self._check_range(key, value)

    def _check_range(self, key: str, value: Tensor) -> None:
        bound = 1.0 + float(self.cfg.margin)
        normalised = self.normalizer.normalize(key, value.detach().double()).abs()
        worst = float(normalised.max())
        if worst <= bound:
            return
        feature = int(normalised.reshape(-1, normalised.shape[-1]).amax(0).argmax())
        ones = torch.ones(normalised.shape[-1], dtype=torch.float64, device=value.device)
        low = float(self.normalizer.unnormalize(key, -ones)[feature])
        high = float(self.normalizer.unnormalize(key, ones)[feature])
        raw = value.reshape(-1, value.shape[-1])[:, feature]
        shown = float(raw[raw.double().sub((low + high) / 2).abs().argmax()])
        message = (
            f"observation {key!r}[{feature}] = {shown:.4g} is far outside the training range "
            f"[{low:.4g}, {high:.4g}] ({worst:.3g} normalised units from its centre; "
            f"obs_guard.margin={self.cfg.margin:g} allows {bound:g})"
        )
        if self.cfg.action == "error":
            raise ObservationError(message)
        self.out_of_range += 1
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "%s; acting on it (obs_guard.action=warn; further ones are counted)", message
            )
