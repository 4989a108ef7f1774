"""Executors and Ray set-up: the same outcomes locally and on a local Ray, failures reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
        cfg = _tiny_bench(tiny_run, tmp_path / executor)
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
