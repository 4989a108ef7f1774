"""Demonstration collection end to end: expert -> robomimic HDF5 -> readers (ours, robomimic's)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bc_fixtures import REPO

from robopolicy.data.hdf5 import dataset_info, load_episodes, read_env_args
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.vector import make_env


def _collect(tmp_path, **overrides):
    cfg = CollectConfig(env_id="robopolicy/Lift-v0", n_demos=3, output=str(tmp_path / "d.hdf5"))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return collect(cfg, progress=False)


def test_collected_demos_replay_from_their_states(tmp_path) -> None:
    summary = _collect(tmp_path)
    assert summary["demos"] == 3 and summary["expert_success_rate"] == 1.0
    env_args = read_env_args(summary["output"])
    assert env_args["env_name"] == "robopolicy/Lift-v0"
    assert env_args["env_kwargs"] == {"obs_type": "state"}
    episodes = load_episodes(summary["output"])
    env = make_env(env_args["env_name"], **env_args["env_kwargs"]).unwrapped
    for ep in episodes:
        assert ep.dones[-1] == 1 and ep.dones[:-1].sum() == 0 and ep.rewards[-1] == 1.0
        assert np.all(np.abs(ep.actions) <= 1.0)
        for key in ep.obs:
            np.testing.assert_array_equal(ep.next_obs[key][:-1], ep.obs[key][1:])
        # Restoring a stored state and replaying the stored action gives the stored next obs.
        t = len(ep.actions) // 2
        env.set_state(ep.states[t])
        for key, value in env.low_dim_obs().items():
            np.testing.assert_allclose(value, ep.obs[key][t], atol=1e-9)
        next_obs, *_ = env.step(ep.actions[t])
        for key, value in next_obs.items():
            np.testing.assert_allclose(value, ep.next_obs[key][t], atol=1e-6)


def test_pixel_demos_have_images(tmp_path) -> None:
    summary = _collect(tmp_path, n_demos=1, env_kwargs={"obs_type": "both", "image_size": 32})
    info = dataset_info(summary["output"])
    assert tuple(info["obs"]["agentview_image"]["shape"]) == (32, 32, 3)
    assert "robot0_eef_pos" in info["obs"] and info["action_dim"] == 4


def test_hopeless_collection_writes_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="Nothing was written"):
        _collect(tmp_path, n_demos=5, max_attempts=2)
    assert list(tmp_path.iterdir()) == []


def _start_collection(output: Path) -> subprocess.Popen:
    """``robopolicy collect`` of far more demos than the test waits for, once its temporary
    file exists (the collection is under way)."""
    command = [
        sys.executable,
        "-m",
        "robopolicy",
        "collect",
        "configs/collect/lift_proficient.yaml",
    ]
    overrides = ["n_demos=100000", "num_envs=1", f"output={output}"]
    process = subprocess.Popen(
        [*command, *overrides],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # a test run started in the background (`make test &`) ignores SIGINT, and the child
        # would inherit that; the test is about a collection that hears it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not _temporaries(output):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()  # never leave a 100000-demo collection running
            pytest.fail("collection never started")
        time.sleep(0.1)
    return process


def _temporaries(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f"{output.name}.tmp-*"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_collection_deletes_its_temporary_file(tmp_path, signum) -> None:
    output = tmp_path / "d.hdf5"
    process = _start_collection(output)
    process.send_signal(signum)
    rc = process.wait(timeout=60)
    # 128 + 15 from SystemExit; Python ends an uncaught KeyboardInterrupt by SIGINT itself
    assert rc == (143 if signum == signal.SIGTERM else -signal.SIGINT)
    assert list(tmp_path.iterdir()) == []


def test_the_next_collection_deletes_temporaries_of_killed_collections(tmp_path) -> None:
    output = tmp_path / "d.hdf5"
    process = _start_collection(output)
    process.kill()  # SIGKILL: nothing can clean up
    process.wait(timeout=60)
    (left,) = _temporaries(output)
    host = socket.gethostname()
    alive = tmp_path / f"d.hdf5.tmp-{host}-{os.getpid()}-0123abcd"  # a writer still at work
    elsewhere = tmp_path / f"d.hdf5.tmp-otherhost-{process.pid}-0123abcd"  # not ours to judge
    for path in (alive, elsewhere):
        path.write_bytes(b"")
    _collect(tmp_path, n_demos=1)
    assert _temporaries(output) == sorted([alive, elsewhere]) and output.is_file()
    assert not left.exists()
