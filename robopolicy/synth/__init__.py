"""Policy-guided diffusion (Jackson et al. 2024): a diffusion model of whole sub-trajectories,
trained on an offline dataset and guided at sampling time by the policy being trained, makes
synthetic experience closer to on-policy than the data, for offline RL to learn from."""
