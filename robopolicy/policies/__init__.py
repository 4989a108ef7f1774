"""BC policies behind one API (``base.BasePolicy``): diffusion and flow matching."""

from robopolicy.policies.base import BasePolicy
from robopolicy.policies.config import PolicyConfig, PolicyShapes
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy

POLICY_CLASSES: dict[str, type[BasePolicy]] = {"diffusion": DiffusionPolicy, "flow": FlowPolicy}


def make_policy(cfg: PolicyConfig, shapes: PolicyShapes, normalizer) -> BasePolicy:
    """Build the policy named by ``cfg.type``."""
    if cfg.type not in POLICY_CLASSES:
        raise ValueError(f"unknown policy type {cfg.type!r}; available: {sorted(POLICY_CLASSES)}")
    return POLICY_CLASSES[cfg.type](cfg, shapes, normalizer)


__all__ = [
    "BasePolicy",
    "DiffusionPolicy",
    "FlowPolicy",
    "PolicyConfig",
    "PolicyShapes",
    "make_policy",
]
