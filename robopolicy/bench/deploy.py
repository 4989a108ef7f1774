"""``robopolicy bench deploy``: the deployment path measured end to end on loopback.

1. In-process reference: the checkpoint evaluated on seeded Lift episodes, and its chunk
   latency at batch 1.
2. ``robopolicy serve`` in its own process; a ``SimController`` in this process drives the
   same seeds through it at the task's control rate (real time): success, missed deadlines,
   and per-request latency (round trip p50/p95/p99), with the server's overhead over
   inference (round trip minus the server's inference time, per request).
3. Load: concurrent clients sending chunk requests back to back: requests served, errors,
   latency percentiles.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import (
    machine_info,
    machine_line,
    markdown_table,
    new_run_dir,
    write_results,
)
from robopolicy.bench.training import train_checkpoint
from robopolicy.checkpoint import load_policy, read_config, resolve_checkpoint
from robopolicy.config import to_dict
from robopolicy.deploy.client import PolicyClient, ServerError
from robopolicy.deploy.controller import ControlLoop, SimController
from robopolicy.files import atomic_save_figure
from robopolicy.sim.agents import PolicyAgent
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.stats import wilson_interval


@dataclass
class Config:
    checkpoint: str | None = None  # default: trained here with train_config
    train_config: str = "train/lift_diffusion_mlp.yaml"
    collect_config: str = "collect/lift_proficient.yaml"
    episodes: int = 50
    seed: int = 100_000
    server_threads: int = 1  # torch threads of the server (the CPU is shared with the sim)
    load_clients: int = 8
    load_seconds: float = 60.0
    out_root: str = "runs/bench"
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # this suite times things: local only (bench.jobs.local_only)


def run(cfg: Config) -> dict[str, Any]:
    local_only(cfg.executor, "deploy")
    torch.set_num_threads(cfg.server_threads)  # in-process reference on the same footing
    out = new_run_dir(cfg.out_root, "deploy")
    checkpoint = str(
        resolve_checkpoint(cfg.checkpoint)
        if cfg.checkpoint
        else train_checkpoint("lift", cfg.train_config, cfg.collect_config, out / "lift")
    )
    task = read_config(checkpoint)["task"]
    env_id, env_kwargs = task["env_id"], dict(task.get("env_kwargs") or {})
    results: dict[str, Any] = {"suite": "deploy", "machine": machine_info()}
    results["config"] = to_dict(cfg)
    results["checkpoint"] = checkpoint

    print("[bench deploy] in-process eval")
    policy = load_policy(checkpoint)
    summary = evaluate(
        env_id, PolicyAgent(policy), n_episodes=cfg.episodes, seed=cfg.seed, num_envs=1
    )
    results["in_process"] = {
        "success_rate": summary["success_rate"],
        "success_ci95": summary["success_ci95"],
        "n": summary["n_episodes"],
        **_percentiles(_chunk_times(policy, env_id, env_kwargs), "chunk_ms"),
    }
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "robopolicy", "serve", checkpoint, f"port={port}"]
        + [f"num_threads={cfg.server_threads}"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = _wait_until_up(port, server)
        print(f"[bench deploy] {cfg.episodes} episodes through {url} at the control rate")
        results["served"] = _served_episodes(url, env_id, env_kwargs, cfg)
        print(f"[bench deploy] load: {cfg.load_clients} clients for {cfg.load_seconds:g} s")
        results["load"] = _load(url, env_id, env_kwargs, cfg)
    finally:
        server.terminate()
        server.wait(30)
    _plot(results, out)
    write_results(out, results, _report(results))
    served, load = results["served"], results["load"]
    print(
        f"[bench deploy] served success {served['success_rate']:.0%} vs in-process "
        f"{results['in_process']['success_rate']:.0%}; round trip p50 "
        f"{served['rtt_ms_p50']:.2f} ms (overhead {served['overhead_ms_p50']:.2f} ms); load "
        f"{load['requests']} requests, {load['errors']} errors, p99 {load['rtt_ms_p99']:.1f} ms "
        f"-> {out}/report.md"
    )
    return results


def _percentiles(values: list[float], name: str) -> dict[str, float]:
    array = np.asarray(values) if values else np.zeros(1)
    return {f"{name}_p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}


def _chunk_times(policy, env_id: str, env_kwargs: dict, repeats: int = 200) -> list[float]:
    """In-process ``predict_chunk`` at batch 1 on a real observation history."""
    obs = _history(env_id, env_kwargs, policy.obs_horizon)
    batch = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in obs.items()}
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        policy.predict_chunk(batch)
        if i >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return times


def _history(env_id: str, env_kwargs: dict, horizon: int) -> dict[str, np.ndarray]:
    sim = SimController(env_id, env_kwargs)
    sim.connect()
    try:
        sim.start_episode(seed=0)
        obs = sim.get_observation()
    finally:
        sim.disconnect()
    return {k: np.stack([np.asarray(v, dtype=np.float32)] * horizon) for k, v in obs.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(port: int, server: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"policy server exited with code {server.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return f"ws://127.0.0.1:{port}"
        time.sleep(0.2)
    raise RuntimeError(f"policy server not up on port {port} after {timeout:g} s")


def _served_episodes(url: str, env_id: str, env_kwargs: dict, cfg: Config) -> dict[str, Any]:
    sim = SimController(env_id, env_kwargs)
    sim.connect()
    successes, rtt, server_ms, missed, dropped, ticks = [], [], [], 0, 0, 0
    try:
        with PolicyClient(url) as client:
            loop = ControlLoop(client)
            for seed in range(cfg.seed, cfg.seed + cfg.episodes):
                sim.start_episode(seed)
                stats = loop.run(sim, max_ticks=10**6, done=lambda: sim.over)
                successes.append(sim.success)
                rtt += stats.rtt_ms
                server_ms += stats.server_ms
                missed += stats.missed_deadlines
                dropped += stats.late_dropped
                ticks += stats.ticks
    finally:
        sim.disconnect()
    overhead = [a - b for a, b in zip(rtt, server_ms, strict=True)]
    low, high = wilson_interval(sum(successes), len(successes))
    return {
        "success_rate": sum(successes) / len(successes),
        "success_ci95": [low, high],
        "n": len(successes),
        "control_hz": sim.control_hz,
        "ticks": ticks,
        "requests": len(rtt),
        "missed_deadlines": missed,
        "late_dropped": dropped,
        **_percentiles(rtt, "rtt_ms"),
        **_percentiles(server_ms, "server_ms"),
        **_percentiles(overhead, "overhead_ms"),
        "rtt_ms_all": rtt,
    }


def _load(url: str, env_id: str, env_kwargs: dict, cfg: Config) -> dict[str, Any]:
    with PolicyClient(url) as probe:
        horizon = int(probe.metadata["obs_horizon"])
    obs = _history(env_id, env_kwargs, horizon)
    latencies: list[list[float]] = [[] for _ in range(cfg.load_clients)]
    errors = [0] * cfg.load_clients
    stop = time.perf_counter() + cfg.load_seconds

    def client_thread(i: int) -> None:
        try:
            with PolicyClient(url) as client:
                while time.perf_counter() < stop:
                    try:
                        client.chunk(obs)
                        latencies[i].append(client.last_rtt_ms)
                    except ServerError:  # an error reply: counted, and the client goes on
                        errors[i] += 1
        except Exception:  # the connection failed or was lost: counted once, client stops
            errors[i] += 1

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(cfg.load_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [x for per_client in latencies for x in per_client]
    return {
        "clients": cfg.load_clients,
        "seconds": cfg.load_seconds,
        "requests": len(everything),
        "requests_per_s": len(everything) / cfg.load_seconds,
        "errors": sum(errors),
        **_percentiles(everything, "rtt_ms"),
    }


def _plot(results: dict[str, Any], out: Path) -> None:
    rtt = results["served"]["rtt_ms_all"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(rtt, bins=50, color="tab:blue")
    ax.axvline(results["in_process"]["chunk_ms_p50"], color="k", ls="--", label="in-process p50")
    ax.set(xlabel="round trip per chunk request (ms)", ylabel="requests", title="served latency")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, out / "deploy.png", dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any]) -> str:
    m, ref, served, load = (results[k] for k in ("machine", "in_process", "served", "load"))

    def rate(r: dict[str, Any]) -> str:
        low, high = r["success_ci95"]
        return f"{r['success_rate']:.0%} [{low:.0%}, {high:.0%}]"

    return "\n".join(
        [
            "# Benchmark: deploy",
            "",
            f"{machine_line(m)} Checkpoint `{results['checkpoint']}`; server and "
            "controller are separate processes on loopback; torch threads "
            f"{results['config']['server_threads']}.",
            "",
            markdown_table(
                ["", "success (Wilson 95%)", "n", "ms p50 / p95 / p99"],
                [
                    [
                        "in-process eval (chunk latency)",
                        rate(ref),
                        ref["n"],
                        f"{ref['chunk_ms_p50']:.2f} / {ref['chunk_ms_p95']:.2f} / "
                        f"{ref['chunk_ms_p99']:.2f}",
                    ],
                    [
                        f"served at {served['control_hz']:g} Hz (round trip)",
                        rate(served),
                        served["n"],
                        f"{served['rtt_ms_p50']:.2f} / {served['rtt_ms_p95']:.2f} / "
                        f"{served['rtt_ms_p99']:.2f}",
                    ],
                    [
                        "server overhead (round trip − inference)",
                        "",
                        served["requests"],
                        f"{served['overhead_ms_p50']:.2f} / {served['overhead_ms_p95']:.2f} / "
                        f"{served['overhead_ms_p99']:.2f}",
                    ],
                ],
            ),
            "",
            f"Control ticks {served['ticks']}, missed deadlines {served['missed_deadlines']}, "
            f"late actions dropped {served['late_dropped']}.",
            "",
            f"Load: {load['clients']} concurrent clients for {load['seconds']:g} s: "
            f"{load['requests']} requests ({load['requests_per_s']:.0f}/s), {load['errors']} "
            f"errors, round trip p50 / p95 / p99 {load['rtt_ms_p50']:.1f} / "
            f"{load['rtt_ms_p95']:.1f} / {load['rtt_ms_p99']:.1f} ms.",
            "",
            "![deploy](deploy.png)",
            "",
        ]
    )
