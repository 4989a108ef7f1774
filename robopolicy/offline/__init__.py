"""Offline RL: TD3+BC and IQL agents (``agents``), the ``robopolicy offline`` config schema
(``config``) and its training loop (``train``), which draws each batch from the real dataset and
from synthetic pools made by ``synth/``. It sits above ``synth/``: guidance knows the agent only
as a ``synth.guidance.TargetPolicy``, so ``synth/`` never imports this package."""
