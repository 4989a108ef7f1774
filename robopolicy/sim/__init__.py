"""Simulation: rendering, env construction, vector envs, rollouts, eval statistics, video."""
