"""The networks of the off-policy core: LayerNorm MLPs, a critic ensemble evaluated in one
batched pass, a deterministic (TD3) actor and a tanh-Gaussian (SAC) actor.

The ensemble keeps every head's weights in one tensor (E, in, out), so E heads cost one
``baddbmm`` per layer instead of E small matmuls: that matters on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# the hidden layers' nonlinearity: ReLU (SAC, TD3, ResFiT) or Tanh (DSRL's reference)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    in_dim: int,
    hidden_dim: int,
    num_layers: int,
    out_dim: int,
    activation: str = "relu",
) -> nn.Sequential:
    """``num_layers`` hidden layers of Linear + LayerNorm + activation, then a Linear head."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim)]
        layers += [nn.LayerNorm(hidden_dim)]
        layers += [ACTIVATIONS[activation]()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied to (E, B, in) -> (E, B, out)."""

    def __init__(self, num_heads: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per head
        self.weight = nn.Parameter(torch.empty(num_heads, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_heads, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate affine transform per head."""

    def __init__(self, num_heads: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """Q_1..Q_E(s, a) -> (E, B), each head a LayerNorm MLP."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_heads: int,
        hidden_dim: int,
        num_layers: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        layers: list[nn.Module] = []
        dim = obs_dim + action_dim
        for _ in range(num_layers):
            layers += [
                EnsembleLinear(num_heads, dim, hidden_dim),
                EnsembleLayerNorm(num_heads, hidden_dim),
                ACTIVATIONS[activation](),
            ]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_heads, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([obs, actions], dim=-1)
        x = x.unsqueeze(0).expand(self.num_heads, *x.shape) if x.ndim == 2 else x
        return self.net(x).squeeze(-1)


def min_of_random_subset(q: Tensor, subset: int) -> Tensor:
    """min over ``subset`` heads drawn at random (REDQ; ResFiT uses a pair of its 10 heads)."""
    heads = torch.randperm(q.shape[0])[:subset]
    return q[heads].min(dim=0).values


class DeterministicActor(nn.Module):
    """TD3's actor: ``scale * tanh(mlp(s))``. ``zero_init`` zeroes the last layer, so a
    residual actor starts by adding exactly nothing to the base action."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int,
        num_layers: int,
        scale: float = 1.0,
        zero_init: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.scale = scale
        self.net = mlp(obs_dim, hidden_dim, num_layers, action_dim, activation=activation)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, obs: Tensor) -> Tensor:
        return self.scale * torch.tanh(self.net(obs))


class GaussianActor(nn.Module):
    """SAC's actor: a = scale * tanh(u), u ~ N(mu(s), sigma(s)); returns (a, log pi(a|s))."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int,
        num_layers: int,
        scale: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.scale = scale
        self.net = mlp(obs_dim, hidden_dim, num_layers, 2 * action_dim, activation=activation)

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        std = log_std.exp()
        u = mean if deterministic else mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        # log N(u; mean, std) minus the log-Jacobian of a = scale * tanh(u)
        log_prob = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        log_prob = log_prob - a.shape[-1] * math.log(self.scale)
        return self.scale * a, log_prob
