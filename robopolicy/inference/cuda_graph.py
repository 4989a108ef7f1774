"""Replay a pure tensor function as a CUDA graph, one graph per input shape.

On a GPU, decoding a batch of noises through a frozen diffusion policy is bound by kernel
launches, not arithmetic: ten denoising steps of an MLP plus the DDIM update are a few hundred
small kernels, each launched from Python (a DSRL-NA update decodes twice). Captured once per
input shape, a call is one graph launch, plus copying its inputs in and its output out.

Only for functions whose kernels do not depend on the input values (no data-dependent Python
branches, no host syncs, no host-to-device copies inside, no random draws) and whose weights
stay where they are: a graph replays the kernels and constants it captured. Settings that
change what the function computes go into ``context``, which is part of the cache key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

EAGER_CALLS = 2  # calls per shape before capturing: a shape seen once or twice stays eager


class CudaGraphed:
    """``fn(*tensors) -> tensor`` that runs as a captured CUDA graph for CUDA inputs whose
    shapes recur, and eagerly otherwise. The result is a fresh tensor (not the graph's buffer)."""

    def __init__(self, fn: Callable[..., Tensor], context: Callable[[], Hashable] = tuple) -> None:
        self.fn = fn
        self.context = context
        self.calls: Counter = Counter()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Tensor], Tensor]] = {}

    @torch.no_grad()
    def __call__(self, *inputs: Tensor) -> Tensor:
        if not inputs[0].is_cuda:
            return self.fn(*inputs)
        key = (self.context(), *((x.shape, x.dtype, x.device) for x in inputs))
        if key not in self.graphs:
            self.calls[key] += 1
            if self.calls[key] <= EAGER_CALLS:
                return self.fn(*inputs)
            self.graphs[key] = self._capture(inputs)
        graph, static_inputs, static_output = self.graphs[key]
        for static, x in zip(static_inputs, inputs, strict=True):
            static.copy_(x)
        graph.replay()
        return static_output.clone()

    def _capture(self, inputs: tuple[Tensor, ...]) -> tuple:
        device = inputs[0].device
        static_inputs = [x.detach().clone() for x in inputs]
        with torch.cuda.device(device):  # cuda:N: capture there, not on the current device
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # one eager call on the capture stream: its
                self.fn(*static_inputs)  # library handles and workspaces exist before capture
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                static_output = self.fn(*static_inputs)
        return graph, static_inputs, static_output
