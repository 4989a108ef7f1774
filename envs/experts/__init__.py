"""Scripted experts, one per task. Each has ``__init__(noise, seed)``, ``reset(env)`` and
``act(env) -> action``, and reads the unwrapped env's privileged state."""
