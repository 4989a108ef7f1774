"""Simulation: rendering backend, env construction, vector envs, rollouts, eval statistics, video."""
