"""How torch's thread count sets training and eval speed on this machine, idle and with one
other busy process: the measurement behind the default ``num_threads`` (docs/benchmarks/sim.md).

    python scripts/thread_speed.py [--steps 200] [--episodes 4] [--out runs/thread_speed.json]
    OMP_WAIT_POLICY=ACTIVE python scripts/thread_speed.py   # spinning threads, as before

Each setting runs in a fresh process (torch's thread pool is set once per process): BC training
of the shipped Lift recipe (``configs/train/lift_diffusion_mlp.yaml``) for ``--steps`` steps
(median samples/s from its log), then an eval of the checkpoint it wrote (ms per action). The
"busy" condition runs one pure-Python spin loop beside it, the load another user's job puts on
a 2-core machine. ``import robopolicy`` lets OpenMP's idle threads sleep
(``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise, as the second line does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"torch default": None, "1 thread": 1, "2 threads": 2}


def measure(threads: int | None, dataset: str, work: Path, steps: int, episodes: int) -> dict:
    """One setting in a child process: training samples/s and eval ms per action."""
    code = f"""
import json, torch
from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig
from robopolicy.sim.evaluate import evaluate
from robopolicy.checkpoint import load_policy
from robopolicy.sim.agents import PolicyAgent
threads = {threads!r}
cfg = load_config(CONFIG_DIR / "train/lift_diffusion_mlp.yaml", TrainConfig, [
    "task.dataset={dataset}", "run_dir={work}", "optim.steps={steps}", "loop.save_every={steps}",
    "loop.log_every=20", "loop.final_eval_episodes=0", f"optim.num_threads={{threads or 0}}"])
result = train_bc(cfg)
rows = [json.loads(x) for x in open("{work}/metrics.jsonl")]
speeds = sorted(r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r)
summary = evaluate("robopolicy/Lift-v0", PolicyAgent(load_policy(result["checkpoint"])),
                   n_episodes={episodes}, progress=False)
print(json.dumps({{"threads": torch.get_num_threads(),
                  "samples_per_s": speeds[len(speeds) // 2],
                  "eval_ms_per_action": summary["time_per_action_ms"]}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--out", default="runs/thread_speed.json")
    args = parser.parse_args()
    from robopolicy.sim.collect import CollectConfig, collect

    policy = os.environ.get("OMP_WAIT_POLICY")  # set by `import robopolicy` unless given
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "lift.hdf5")
        collect(CollectConfig(env_id="robopolicy/Lift-v0", n_demos=20, output=data), progress=False)
        for load in ("idle", "one busy process"):
            spinner = None
            if load != "idle":
                spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for name, threads in SETTINGS.items():
                    work = Path(tmp) / f"{load}-{name}".replace(" ", "_")
                    row = {"load": load, "setting": name, "omp_wait_policy": policy}
                    row |= measure(threads, data, work, args.steps, args.episodes)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
