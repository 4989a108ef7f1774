"""Real-time-iteration (RTI) denoising (RTI-DP, Duan, Yin and Kragic 2025): re-plan at every
control step by warm-starting from the previous chunk and running only its last denoising steps.

At each step after the first of an episode:

1. shift the previous chunk by one and repeat its last action:
   G = [a_{t+1}, ..., a_{t+H-1}, a_{t+H-1}];
2. clip the discrete (gripper) dimensions of G to +-``warm_start_clip`` so that the warm start
   cannot lock the gripper in its old state;
3. ``predict_chunk(obs, warm_start=G, start_step=K')``: the policy re-noises G with its own
   trained schedule to the noise level K' sampler steps before the end and runs those K' steps
   (a flow policy starts integrating at t = K'/n on the straight path from G to the noise);
4. execute the chunk's action for now (thresholded to +-1 on discrete dimensions).

The first chunk of an episode is denoised in full from Gaussian noise, by the same chain or,
with ``cold_start_steps``, by a short deterministic DDIM chain of the same model (diffusion) or
fewer Euler steps (flow): the warm-started steps dominate long episodes, but on short ones a
100-step first chunk is most of the cost. Cost: K' network evaluations per later action.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from robopolicy.inference.executor import Executor


def shift_warm_start(chunk: Tensor, discrete_dims: Sequence[int] = (), clip: float = 0.1) -> Tensor:
    """The warm start for the next step: ``chunk`` (B, H, A) advanced by one step.

    Discrete dimensions are clipped to [-clip, clip] (commands live in [-1, 1]): the sign, the
    plan's intent, survives, but a few denoising steps can still flip it.
    """
    shifted = torch.cat([chunk[:, 1:], chunk[:, -1:]], dim=1)
    if discrete_dims:
        dims = list(discrete_dims)
        shifted[..., dims] = shifted[..., dims].clamp(-clip, clip)
    return shifted


class RTIExecutor(Executor):
    def __init__(
        self,
        policy,
        batch_size: int,
        discrete_dims: Sequence[int] = (),
        start_step: int = 3,
        warm_start_clip: float = 0.1,
        cold_start_steps: int | None = None,
    ) -> None:
        super().__init__(policy, batch_size, discrete_dims)
        if cold_start_steps is not None and cold_start_steps < 1:
            raise ValueError(f"RTI cold_start_steps must be >= 1, got {cold_start_steps}")
        if not 1 <= start_step <= policy.num_inference_steps:
            raise ValueError(
                f"RTI start_step (K') must be in [1, num_inference_steps="
                f"{policy.num_inference_steps}], got {start_step}"
            )
        if not 0 < warm_start_clip <= 1:
            raise ValueError(f"warm_start_clip must be in (0, 1], got {warm_start_clip}")
        self.start_step = start_step
        self.warm_start_clip = warm_start_clip
        self.cold_start_steps = cold_start_steps
        self.previous: list[Tensor | None] = [None] * batch_size

    def _reset_episode(self, i: int) -> None:
        self.previous[i] = None

    def _plan(self) -> Tensor:
        fresh = [i for i, chunk in enumerate(self.previous) if chunk is None]
        warm = [i for i, chunk in enumerate(self.previous) if chunk is not None]
        if fresh:
            self._store(fresh, self._cold_start(fresh))
        if warm:
            guess = shift_warm_start(
                torch.stack([self.previous[i] for i in warm]),
                self.discrete_dims,
                self.warm_start_clip,
            )
            self._store(warm, self._predict(warm, warm_start=guess, start_step=self.start_step))
        return torch.stack([chunk[self.first_action_index] for chunk in self.previous])

    def _cold_start(self, rows: Sequence[int]) -> Tensor:
        """Full denoising from noise, with the cold-start chain when one is configured."""
        if self.cold_start_steps is None:
            return self._predict(rows)
        flow = self.policy.cfg.type == "flow"  # flow has no sampler to switch, only steps
        chain = (None if flow else self.policy.cfg.sampler, self.policy.num_inference_steps)
        short = None if flow else "ddim"
        self.policy.set_sampler(short, self.cold_start_steps)
        try:
            return self._predict(rows)
        finally:
            self.policy.set_sampler(*chain)

    def _store(self, rows: Sequence[int], chunks: Tensor) -> None:
        for row, i in enumerate(rows):
            self.previous[i] = chunks[row]
