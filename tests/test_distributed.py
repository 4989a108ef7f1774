"""Executors and Ray set-up: the same outcomes locally and on a local Ray, failures reported."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robopolicy.config import ConfigError
from robopolicy.distributed import RayConfig
from robopolicy.distributed.executor import Job, LocalExecutor, RayExecutor, make_executor


def _square_or_fail(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * x


def _jobs() -> list[Job]:
    return [Job(f"job{x}", _square_or_fail, (x,), num_cpus=1) for x in (2, -1, 3)]


def test_local_executor_reports_a_failing_job_and_runs_the_others() -> None:
    outcomes = list(LocalExecutor().run(_jobs()))
    assert [o.key for o in outcomes] == ["job2", "job-1", "job3"]
    assert [o.value for o in outcomes] == [4, None, 9]
    assert outcomes[1].error == "ValueError: negative input -1"


def test_ray_executor_gives_the_local_outcomes(local_ray) -> None:
    outcomes = {o.key: o for o in make_executor("ray", RayConfig()).run(_jobs())}
    assert {k: o.value for k, o in outcomes.items()} == {"job2": 4, "job-1": None, "job3": 9}
    assert "ValueError: negative input -1" in outcomes["job-1"].error


def test_ray_executor_refuses_more_gpus_than_the_cluster_has(local_ray) -> None:
    jobs = [Job("big", _square_or_fail, (1,), num_gpus=64)]
    with pytest.raises(ConfigError, match=r"job 'big' asks for 64 GPU\(s\) per run.* has 0"):
        next(RayExecutor(RayConfig()).run(jobs))


def test_bad_executor_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="executor must be one of"):
        make_executor("dask", RayConfig())
    with pytest.raises(ConfigError, match="ray.num_cpus and ray.num_gpus must be >= 0"):
        make_executor("local", RayConfig(num_gpus=-1))


def test_no_cluster_at_the_address_is_a_clear_error() -> None:
    """In a fresh process (this one has the session's Ray): refused in seconds, not after
    Ray's retries."""
    code = (
        "from robopolicy.distributed.cluster import connect;"
        "from robopolicy.distributed import RayConfig;"
        "connect(RayConfig(address='ray://127.0.0.1:9'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ray.address='ray://127.0.0.1:9': no Ray cluster there" in done.stderr
    with pytest.raises(ConfigError, match="expected 'auto', 'host:port'"):
        from robopolicy.distributed.cluster import _check_reachable

        _check_reachable("nowhere")


# the RL runs' envs in-process, their eval episodes 10 steps long
SHORT = ("num_envs=1", "env_kwargs={obs_type: state, max_episode_steps: 10}")


def _comparable(out, results: dict) -> dict:
    """results.json without what differs from one bench to the next: timings, the folder."""
    text = json.dumps(results).replace(str(out), "<out>")
    comparable = json.loads(text)
    for entry in comparable["tasks"].values():
        for run in entry["runs"].values():
            run.pop("minutes")
    return comparable


def test_bench_on_ray_matches_the_local_bench_and_reports_a_failing_run(
    local_ray, tiny_run, tmp_path
) -> None:
    """Two seeds of residual RL plus a method whose runs fail (its demos file is missing at run
    time): on Ray, the same results.json as a local bench; the failures are reported."""
    from test_residual import _tiny_bench

    from robopolicy.bench import rl

    broken = tmp_path / "broken.yaml"
    broken.write_text(f"defaults: [rl/residual_lift]\ndemos: {tmp_path / 'missing.hdf5'}\n")
    outs = {}
    for executor in ("local", "ray"):
        cfg = _tiny_bench(tiny_run, tmp_path / executor, *SHORT)
        cfg.executor = executor
        cfg.tasks[0].methods["broken"] = str(broken)
        results = rl.run(cfg)
        out = next((tmp_path / executor / "residual").iterdir())
        assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
        outs[executor] = _comparable(out, results)
    local, ray_ = outs["local"], outs["ray"]
    assert ray_["tasks"] == local["tasks"]
    lift = ray_["tasks"]["lift"]
    assert list(lift["runs"]) == ["residual/seed0", "residual/seed1"]
    assert sorted(lift["failed"]) == ["broken/seed0", "broken/seed1"]
    assert "missing.hdf5" in lift["failed"]["broken/seed0"]["error"]
    report = (next((tmp_path / "ray" / "residual").iterdir()) / "report.md").read_text()
    assert "Failed runs" in report and "lift broken/seed1:" in report


def test_eval_on_ray_matches_the_local_eval(local_ray, tiny_run, tmp_path) -> None:
    """Shards of a fixed checkpoint's eval on Ray workers: the same episodes, seeds and
    successes as the same eval in this process; one shard is the unsharded eval."""
    from robopolicy.sim.evaluate import EvalConfig, run_eval_config

    def run(executor: str, per_job: int, n: int = 3) -> dict:
        return run_eval_config(
            EvalConfig(
                checkpoint=str(tiny_run),
                n_episodes=n,
                episodes_per_job=per_job,
                executor=executor,
                num_envs=1,
                video_episodes=0,
                out_dir=str(tmp_path / f"{executor}{per_job}"),
            )
        )

    local, on_ray = run("local", 2), run("ray", 2)
    assert on_ray["shards"] == local["shards"] == 2
    assert on_ray["seeds"] == [100_000, 100_001, 100_002]
    assert on_ray["per_episode"] == local["per_episode"]
    assert on_ray["success_rate"] == local["success_rate"]
    written = json.loads((tmp_path / "ray2" / "eval.json").read_text())
    assert written["per_episode"] == on_ray["per_episode"]
    # the first shard on Ray is the plain eval of its two episodes here
    assert run("local", 0, n=2)["per_episode"] == on_ray["per_episode"][:2]


def _sweep_args(tiny_run, tmp_path, *extra: str) -> list[str]:
    """A sweep of tiny residual RL runs (20 env steps, an eval of one 10-step episode every 10)
    from the tiny base."""
    return [
        f"base={tiny_run}",
        "env_steps=20",
        "eval_every=10",
        "eval_episodes=1",
        "final_eval_episodes=1",
        "warmup_steps=10",
        "critic_warmup_updates=2",
        "num_envs=1",
        "env_kwargs={obs_type: state, max_episode_steps: 10}",
        "agent.hidden_dim=16",
        "agent.critic_heads=2",
        "agent.batch_size=8",
        f"out_root={tmp_path}",
        "ray.num_cpus=1",
        *extra,
    ]


def test_sweep_runs_four_trials_writes_a_table_and_picks_the_best(
    local_ray, tiny_run, tmp_path, capsys
) -> None:
    from robopolicy.sweep import plan_sweep, run_sweep, summary_lines

    args = _sweep_args(
        tiny_run,
        tmp_path,
        "grid.seed=[0,1]",
        "grid.agent.actor_lr=[1e-4,3e-4]",
        "metric=mean_return",
        "early_stop=true",  # ASHA in the loop; grace_evals covers all 3 evals: every trial ends
        "grace_evals=3",
    )
    plan = plan_sweep("configs/rl/residual_lift.yaml", args)
    assert plan.command == "finetune" and len(plan.specs) == 4
    summary = run_sweep(plan)
    out = Path(summary["out"])
    assert out.parent == tmp_path / "residual_lift"
    rows = summary["trials"]
    assert [(r["trial"], r["seed"], r["agent.actor_lr"]) for r in rows] == [
        (0, 0, 1e-4),
        (1, 0, 3e-4),
        (2, 1, 1e-4),
        (3, 1, 3e-4),
    ]
    assert all(r["status"] == "done" and r["step"] == 20 for r in rows)
    best = summary["best"]
    assert best["metric"] == max(r["metric"] for r in rows)
    assert best["checkpoint"] == str(out / f"trial_{best['trial']}" / "checkpoints" / "0000020")
    # each trial is an ordinary run folder: its config and final eval are there
    trial = out / "trial_3"
    assert "actor_lr: 0.0003" in (trial / "config.yaml").read_text()
    assert (trial / "eval-0000020" / "eval.json").is_file()
    with (out / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["trial"] for row in table] == ["0", "1", "2", "3"]
    assert f"Best: trial {best['trial']}" in (out / "sweep.md").read_text()
    lines = summary_lines(summary)  # what `robopolicy sweep` prints
    assert lines[-2] == (
        f"best: trial {best['trial']} (mean_return {best['metric']:.3g}) -> {best['checkpoint']}"
    )


def test_sweep_refuses_bad_input_before_any_trial(local_ray, tiny_run, tmp_path, capsys) -> None:
    from robopolicy.cli import main

    def error(*extra: str) -> str:
        code = main(
            ["sweep", "configs/rl/residual_lift.yaml", *_sweep_args(tiny_run, tmp_path, *extra)]
        )
        assert code == 2
        return capsys.readouterr().err

    assert (
        "grid.agent.hiden_dim: configs/rl/residual_lift.yaml (finetune config) has no key"
        in error("grid.agent.hiden_dim=[8,16]")
    )
    assert "trial 1 {'seed': 'x'}" in error("grid.seed=[0,x]")
    assert "uniform.agent.actor_lr needs [low, high]" in error("uniform.agent.actor_lr=[1,0]")
    assert not tmp_path.joinpath("residual_lift").exists()  # nothing started
    assert "asks for 8 GPU(s) per run, but the largest node" in error(
        "grid.seed=[0,1]", "ray.num_gpus=8"
    )
    assert not list(tmp_path.glob("residual_lift/*/trial_*"))


def test_bench_bc_on_ray_matches_the_local_bench_and_reports_a_failing_run(
    local_ray, lift_demos, tmp_path
) -> None:
    """BC trainings as Ray tasks: the same success figures and steps as one after the other
    here; a run whose config cannot train is listed with its error, the other finishes."""
    from bc_fixtures import TINY_TRAIN_OVERRIDES

    from robopolicy.bench import bc

    tiny = [
        f"task.dataset={lift_demos}",
        "task.env_kwargs={obs_type: state, max_episode_steps: 10}",
        *TINY_TRAIN_OVERRIDES,
        "optim.steps=10",
        "loop.save_every=10",
    ]
    runs = [
        bc.BCRun("tiny", "train/lift_diffusion.yaml", "collect/lift_proficient.yaml", tiny),
        bc.BCRun(
            "broken",
            "train/lift_diffusion.yaml",
            "collect/lift_proficient.yaml",
            [*tiny, "task.obs_keys=[no_such_key]"],
        ),
    ]
    figures = {}
    for executor in ("local", "ray"):
        cfg = bc.Config(
            runs=runs,
            eval_episodes=2,
            latency_repeats=2,
            speed_steps=1,
            out_root=str(tmp_path / executor),
            executor=executor,
        )
        results = bc.run(cfg)
        assert list(results["runs"]) == ["tiny"]
        assert "no_such_key" in results["failed"]["broken"]["error"]
        run = results["runs"]["tiny"]
        figures[executor] = [run[k] for k in ("success_rate", "n", "steps", "parameters")]
    assert figures["ray"] == figures["local"]
    report = (next((tmp_path / "ray" / "bc").iterdir()) / "report.md").read_text()
    assert "Failed runs" in report and "Trained as Ray tasks" in report


def test_timing_suites_stay_local_and_executors_are_checked(capsys) -> None:
    from robopolicy.cli import main

    for suite in ("sim", "rti", "rti_flow", "deploy", "reliability"):
        assert main(["bench", suite, "executor=ray"]) == 2
        assert "measures speed on this machine" in capsys.readouterr().err
    assert main(["bench", "residual", "executor=dask"]) == 2
    assert "executor must be one of ['local', 'ray'], got 'dask'" in capsys.readouterr().err


def test_a_bench_run_on_cuda_asks_ray_for_a_gpu(local_ray, tiny_run, tmp_path) -> None:
    """A method on CUDA is a Ray task with one GPU (or ray.num_gpus); a cluster without one
    refuses the bench before any work (on a CPU-only machine)."""
    from test_residual import _tiny_bench

    from robopolicy.bench import rl

    cfg = _tiny_bench(tiny_run, tmp_path)
    cfg.executor = "ray"
    job = rl._run_job(cfg, "lift", "gpu", "rl/dsrl_na_lift_gpu.yaml", tiny_run, 0, tmp_path / "r")
    assert (job.num_cpus, job.num_gpus) == (1.0, 1.0)
    cfg.ray.num_gpus = 0.5  # two runs share a GPU
    job = rl._run_job(cfg, "lift", "gpu", "rl/dsrl_na_lift_gpu.yaml", tiny_run, 0, tmp_path / "r")
    assert job.num_gpus == 0.5
    if not torch.cuda.is_available():
        cfg.ray.num_gpus = None
        cfg.tasks[0].methods = {"gpu": "rl/dsrl_na_lift_gpu.yaml"}
        with pytest.raises(ConfigError, match=r"lift gpu .*asks for 1 GPU\(s\) per run.* has 0"):
            rl.run(cfg)
        assert not (tmp_path / "residual").exists()


def _visible_gpus() -> tuple[str, bool]:
    import os

    import torch

    return os.environ.get("CUDA_VISIBLE_DEVICES", ""), torch.cuda.is_available()


@pytest.mark.gpu
def test_a_job_that_asks_for_a_gpu_gets_one(local_ray) -> None:
    """Where a GPU is lent (``pytest -m gpu``): Ray (which finds the GPUs itself) hands the
    job a CUDA device."""
    (outcome,) = RayExecutor(RayConfig()).run([Job("gpu", _visible_gpus, num_gpus=1)])
    visible, available = outcome.value
    assert visible != "" and available


def test_sweep_draws_random_keys_per_grid_point_repeatably(tiny_run, tmp_path) -> None:
    from robopolicy.sweep import plan_sweep

    def params(seed: int) -> list[dict]:
        args = _sweep_args(
            tiny_run,
            tmp_path,
            "grid.seed=[0,1]",
            "choice.agent.hidden_dim=[8,16]",
            "loguniform.agent.actor_lr=[1e-5,1e-3]",
            "num_samples=3",
            f"sample_seed={seed}",
        )
        return plan_sweep("configs/rl/residual_lift.yaml", args).params

    drawn = params(0)
    assert [p["seed"] for p in drawn] == [0, 0, 0, 1, 1, 1]
    assert all(p["agent.hidden_dim"] in (8, 16) for p in drawn)
    assert all(1e-5 <= p["agent.actor_lr"] <= 1e-3 for p in drawn)
    assert params(0) == drawn and params(1) != drawn
