"""Why does a policy fail a gripper task? Sort its failed episodes by what went wrong.

Rolls a checkpoint (BC policy, residual or DSRL agent) out on Lift or PickPlace, one episode
at a time, and classifies each failure by the state the episode ended in:

- never grasped: the fingers never both touched the cube;
- still holding: the episode ran out with the cube in the hand (PickPlace: never released);
- released off target: the cube ended on the table, released, beyond the placement tolerance;
- other: anything else (dropped while carrying, tipped over, ...).

This is what showed that most scarce-data PickPlace failures are "still holding" (the base
never opens the gripper), which a residual that cannot change the gripper command cannot fix
(``residual_gripper_gain`` in ``robopolicy finetune``).

Usage: python scripts/gripper_failures.py CHECKPOINT [N_EPISODES] [OUT_JSON]
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from robopolicy.checkpoint import read_config, resolve_checkpoint
from robopolicy.files import atomic_write_json
from robopolicy.inference.execution import ExecutionConfig
from robopolicy.sim.evaluate import EvalConfig, checkpoint_agent
from robopolicy.sim.vector import make_vector_env

EVAL_SEED = EvalConfig.seed  # the eval harness's held-out seeds


def classify(env, success: bool, ever_grasped: bool) -> str:
    if success:
        return "success"
    if not ever_grasped:
        return "never grasped"
    if env.grasping():
        return "still holding"
    placed = hasattr(env, "placement_error") and env.cube_resting()  # PickPlace only
    if placed and env.placement_error() > env.PLACE_TOL:
        return "released off target"
    return "other"


def main(path: str, n_episodes: int = 50, out: str | None = None) -> dict:
    torch.manual_seed(0)  # the policies' sampled noise: the same breakdown on every run
    checkpoint = resolve_checkpoint(path)
    config = read_config(checkpoint)
    task = config.get("task", {})
    agent = checkpoint_agent(checkpoint, config, "cpu", ExecutionConfig())
    envs = make_vector_env(task["env_id"], 1, task.get("env_kwargs"), asynchronous=False)
    env = envs.envs[0].unwrapped
    if not hasattr(env, "grasping"):
        raise SystemExit(f"{task['env_id']} is not a gripper task (Lift, PickPlace)")
    agent.prepare(envs)
    outcomes = []
    for episode in tqdm(range(n_episodes), desc="episodes"):
        obs, _ = envs.reset(seed=[EVAL_SEED + episode])
        agent.reset(np.ones(1, dtype=bool))
        success = grasped = False
        while True:
            obs, _, terminated, truncated, info = envs.step(agent.act(obs, envs))
            grasped |= env.grasping()
            success |= bool(np.asarray(info.get("is_success", [False]))[0])
            if terminated[0] or truncated[0]:
                break
        outcomes.append(classify(env, success, grasped))
    envs.close()
    counts = dict(Counter(outcomes))
    summary = {"checkpoint": str(checkpoint), "n_episodes": n_episodes, "outcomes": counts}
    if out:
        atomic_write_json(out, summary)
    print(json.dumps(counts))
    return summary


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    main(args[0], int(args[1]) if len(args) > 1 else 50, args[2] if len(args) > 2 else None)
