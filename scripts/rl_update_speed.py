"""Milliseconds per gradient update of a DSRL learner on a real base, at a chosen network scale
and device: what decides how long an RL run at a paper's scale takes on a machine.

The batch is random (features of the base's size, noises, chunks, rewards): the time of an
update does not depend on the values. Prints one JSON line.

    python scripts/rl_update_speed.py runs/bench/dsrl/<stamp>/lift/base --device cuda \\
        --hidden-dim 2048 --num-layers 3 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from robopolicy.checkpoint import load_policy, resolve_checkpoint
from robopolicy.device import resolve_device
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.dsrl import NoiseAliasingLearner, NoiseBase
from robopolicy.rl.learner import Learner
from robopolicy.rl.replay import Batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="a BC run or checkpoint directory (the frozen base)")
    parser.add_argument("--method", choices=("dsrl_na", "dsrl_sac"), default="dsrl_na")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--updates", type=int, default=200, help="timed updates")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)

    policy = load_policy(resolve_checkpoint(args.base), device=device)
    base = NoiseBase(policy, 1)
    cfg = AgentConfig(
        algo="sac",
        hidden_dim=args.hidden_dim,
        num_layers=args.num_layers,
        critic_heads=2,
        batch_size=args.batch_size,
        n_step=1,
        action_scale=1.5,
    )
    if args.method == "dsrl_na":
        learner = NoiseAliasingLearner(
            cfg, base.feature_dim, base.noise_dim, base.chunk_dim, base.decode
        )
        critic_action_dim = base.chunk_dim
    else:
        learner = Learner(cfg, base.feature_dim, base.noise_dim)
        critic_action_dim = base.noise_dim
    learner.to(device)
    n = args.batch_size
    batch = Batch(
        torch.randn(n, base.feature_dim),
        torch.randn(n, critic_action_dim).clamp(-1, 1),
        -torch.rand(n),
        torch.randn(n, base.feature_dim),
        torch.full((n,), 0.99),
    )

    def run(updates: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(updates):
            learner.update(batch.to(device))  # the host-to-device copy is part of each update
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    run(args.warmup)
    seconds = run(args.updates)
    result = {
        "method": args.method,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "networks": f"{args.num_layers}x{args.hidden_dim}",
        "batch_size": n,
        "denoising_steps": policy.num_inference_steps,
        "ms_per_update": round(1000 * seconds / args.updates, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
