"""The main demo (``make demo``): what the workbench does today, end to end on the CPU.

1. collect scripted-expert demonstrations of Lift into a robomimic-format HDF5 file;
2. evaluate the expert on held-out seeds (success with a Wilson interval, an mp4);
3. write ``runs/demo/<timestamp>/report.md`` tying it together.
"""

from __future__ import annotations

import time
from pathlib import Path

from robopolicy.data.hdf5 import dataset_info
from robopolicy.files import atomic_write_text
from robopolicy.sim.agents import ExpertAgent
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.evaluate import evaluate, summary_line

ENV_ID = "robopolicy/Lift-v0"


def main() -> None:
    run = Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S")
    print(f"[demo] 1/3 collecting 50 expert demonstrations of {ENV_ID}")
    data = collect(
        CollectConfig(env_id=ENV_ID, n_demos=50, noise=0.0, output=str(run / "lift.hdf5"))
    )
    info = dataset_info(data["output"])
    print("[demo] 2/3 evaluating the expert on 50 held-out seeds")
    summary = evaluate(ENV_ID, ExpertAgent(0.0), n_episodes=50, out_dir=run / "eval")
    low, high = summary["success_ci95"]
    keys = ", ".join(f"`{key}` {tuple(spec['shape'])}" for key, spec in info["obs"].items())
    report = "\n".join(
        [
            f"# robopolicy demo, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            "## Demonstrations",
            f"`{data['output']}`: {info['num_demos']} demos, {info['total_samples']} samples, "
            f"collected at {data['demos_per_minute']:.0f} demos/minute (expert success while "
            f"collecting: {data['expert_success_rate']:.0%} of {data['attempts']} episodes).",
            f"Observation keys: {keys}.",
            "",
            "## Expert evaluation",
            f"Success {summary['success_rate']:.0%} (Wilson 95% [{low:.0%}, {high:.0%}], "
            f"n={summary['n_episodes']}, seeds {summary['seeds'][0]}..{summary['seeds'][-1]}); "
            f"mean episode length {summary['mean_episode_length']:.1f} steps; "
            f"{summary['time_per_action_ms']:.2f} ms per action.",
            "",
            "Video of the first episodes: [eval/rollouts.mp4](eval/rollouts.mp4)",
            "",
        ]
    )
    atomic_write_text(run / "report.md", report)
    print(f"[demo] 3/3 {summary_line(summary)}")
    print(f"[demo] report: {run / 'report.md'}")


if __name__ == "__main__":
    main()
