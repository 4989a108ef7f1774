"""Deployment: wire format, export + ONNX parity, the policy server and its bad inputs, the
fixed-rate control loop (late actions dropped, missed deadlines counted)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from bc_fixtures import TINY as BC_TINY
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from robopolicy.bench.reliability import NonReadingClient
from robopolicy.checkpoint import save_checkpoint
from robopolicy.cli import build_parser, main
from robopolicy.data.normalizer import Normalizer
from robopolicy.deploy.client import PolicyClient, ServerError
from robopolicy.deploy.codec import ProtocolError, pack, unpack
from robopolicy.deploy.controller import ControlLoop, SimController
from robopolicy.deploy.export import export_checkpoint
from robopolicy.deploy.server import PolicyServer, ServeConfig, resolve_api_key
from robopolicy.inference.guard import (
    NonFiniteActionError,
    ObservationError,
    ObsGuard,
    ObsGuardConfig,
    check_actions,
)
from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy
from robopolicy.sim.agents import GuardedAgent

LIFT_OBS = {"object": [10], "robot0_eef_pos": [3], "robot0_gripper_qpos": [2]}
TINY = {**BC_TINY, "num_inference_steps": 4, "image_feature_dim": 8}


def lift_checkpoint(path, policy_type="diffusion", backbone="mlp", image_size=0):
    """An untrained Lift checkpoint with the real task's shapes (state, or both cameras)."""
    torch.manual_seed(0)
    obs = dict(LIFT_OBS)
    env_kwargs = {"obs_type": "state"}
    if image_size:
        obs["agentview_image"] = [image_size, image_size, 3]
        env_kwargs = {"obs_type": "both", "image_size": image_size}
    shapes = PolicyShapes(obs=obs, action_dim=4, control_hz=20.0)
    cfg = PolicyConfig(type=policy_type, backbone=backbone, **TINY)
    stats = {k: torch.randn(50, v[0]) for k, v in LIFT_OBS.items()}
    normalizer = Normalizer.fit({**stats, "actions": torch.rand(50, 4) * 2 - 1})
    policy = make_policy(cfg, shapes, normalizer)
    config = {
        "policy": cfg.__dict__,
        "shapes": shapes.__dict__,
        "task": {"env_id": "robopolicy/Lift-v0", "env_kwargs": env_kwargs},
    }
    save_checkpoint(path / "checkpoints" / "0000001", policy.state_dict(), config, step=1)
    return path


def test_codec_round_trips_arrays_and_refuses_objects() -> None:
    message = {"obs": {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, "n": np.int64(3)}
    decoded = unpack(pack(message))
    np.testing.assert_array_equal(decoded["obs"]["x"], message["obs"]["x"])
    assert decoded["n"] == 3
    with pytest.raises(TypeError):
        pack({"x": np.array([object()])})
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        unpack(b"\xc1garbage")
    bad = msgpack.packb({"__ndarray__": "|O", "shape": [1], "data": b"\x00" * 8})
    with pytest.raises(ProtocolError, match="not allowed"):
        unpack(bad)
    short = msgpack.packb({"__ndarray__": "<f4", "shape": [4], "data": b"\x00" * 8})
    with pytest.raises(ProtocolError, match="does not match"):
        unpack(short)


@pytest.mark.parametrize(
    "policy_type,backbone,image_size",
    [
        ("diffusion", "mlp", 0),
        ("diffusion", "unet", 0),
        ("flow", "unet", 0),
        ("diffusion", "mlp", 24),  # with a camera
    ],
)
def test_export_onnx_matches_torch(tmp_path, policy_type, backbone, image_size) -> None:
    run = lift_checkpoint(tmp_path / "run", policy_type, backbone, image_size)
    result = export_checkpoint(run, tmp_path / "export")
    assert result["onnx"]["max_abs_diff"] < 1e-4
    meta = json.loads((tmp_path / "export" / "deploy.json").read_text())
    assert meta["action_dim"] == 4 and meta["discrete_action_dims"] == [3]
    assert len(meta["action_meaning"]) == 4 and meta["control_hz"] == 20.0
    assert meta["observations"]["robot0_eef_pos"]["shape"] == [3]
    assert {p.name for p in (tmp_path / "export").iterdir()} >= {"policy.onnx", "model.safetensors"}
    with pytest.raises(FileExistsError):
        export_checkpoint(run, tmp_path / "export")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = lift_checkpoint(tmp_path_factory.mktemp("run"))
    cfg = ServeConfig(
        checkpoint=str(run),
        port=0,
        api_key="secret",
        max_message_bytes=2**16,
        obs_guard=ObsGuardConfig(action="error"),
    )
    server = PolicyServer(cfg)
    return server, f"ws://127.0.0.1:{server.start_background()}"


def lift_obs(with_time: bool = False) -> dict[str, np.ndarray]:
    lead = (2,) if with_time else ()
    return {k: np.zeros((*lead, *v), dtype=np.float32) for k, v in LIFT_OBS.items()}


def test_server_answers_chunks_actions_resets_and_health(server) -> None:
    _, url = server
    with PolicyClient(url, api_key="secret") as client:
        assert client.metadata["type"] == "metadata" and client.metadata["obs_horizon"] == 2
        chunk = client.chunk(lift_obs(with_time=True))
        assert chunk.shape == (7, 4) and set(np.unique(chunk[:, 3])) <= {-1.0, 1.0}
        action = client.act(lift_obs())
        assert action.shape == (4,) and client.last_server_ms > 0
        client.reset()
        assert client.request({"type": "ping"})["type"] == "pong"
    health = url.replace("ws://", "http://") + "/healthz"
    assert urllib.request.urlopen(health, timeout=5).read() == b"ok\n"


def test_bad_messages_get_errors_and_the_server_keeps_serving(server) -> None:
    _, url = server
    with PolicyClient(url, api_key="secret") as client:
        cases = [
            ({"type": "chunk", "obs": {"object": np.zeros((2, 10))}}, "missing"),
            ({"type": "chunk", "obs": {**lift_obs(True), "extra": np.zeros(1)}}, "unexpected"),
            ({"type": "chunk", "obs": lift_obs(False)}, "expected shape"),
            ({"type": "act", "obs": {**lift_obs(), "object": np.zeros(10, bool)}}, "numbers"),
            ({"type": "act", "obs": {**lift_obs(), "object": np.full(10, np.nan)}}, "NaN"),
            ({"type": "act", "obs": [1, 2]}, "'obs' must be a map"),
            ({"type": "dance"}, "unknown message type"),
        ]
        for message, expected in cases:
            with pytest.raises(ServerError, match=expected):
                client.request(message)
        with pytest.raises(ServerError) as echoed:  # a huge type is not echoed back whole
            client.request({"type": "x" * 10_000})
        assert len(str(echoed.value)) < 200
        with connect(url, additional_headers={"Authorization": "Bearer secret"}) as raw:
            raw.recv(5)  # metadata
            raw.send(b"\xc1not msgpack")
            assert "malformed msgpack" in unpack(raw.recv(5))["message"]
            raw.send("a text frame")
            assert "binary" in unpack(raw.recv(5))["message"]
            raw.send(b"\x00" * 2**17)  # over the size limit: closed with 1009, cleanly
            with pytest.raises(ConnectionClosed):
                raw.recv(5)
        with connect(url, additional_headers={"Authorization": "Bearer secret"}) as leaver:
            leaver.recv(5)
            leaver.send(pack({"type": "chunk", "obs": lift_obs(True)}))  # and leaves at once
        assert client.chunk(lift_obs(True)).shape == (7, 4)  # still served


def test_concurrent_clients_and_new_connections_do_not_disturb_inference(server) -> None:
    # A new connection once replaced the shared sampler while another request sampled with it.
    policy_server, url = server
    sampler, errors_before = policy_server.policy.sampler, policy_server.errors
    failures: list[BaseException] = []

    def requester() -> None:
        try:
            with PolicyClient(url, api_key="secret") as client:
                for _ in range(15):
                    assert client.chunk(lift_obs(True)).shape == (7, 4)
                    with PolicyClient(url, api_key="secret"):  # a newcomer, mid-stream
                        pass
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)

    threads = [threading.Thread(target=requester) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert policy_server.policy.sampler is sampler
    assert policy_server.errors == errors_before


def test_wrong_api_key_is_refused(server) -> None:
    _, url = server
    with pytest.raises(InvalidStatus, match="401"):
        PolicyClient(url, api_key="wrong")
    with pytest.raises(InvalidStatus, match="401"):
        PolicyClient(url)


class FakeClient:
    """Answers chunk requests [0, 1, 2, ...] after ``latency`` seconds of fake time."""

    def __init__(self, clock: list[float], latency: float) -> None:
        self.clock, self.latency = clock, latency
        self.metadata = {"obs_horizon": 1, "action_horizon": 4}
        self.last_rtt_ms = self.last_server_ms = 0.0

    def request(self, message: dict) -> dict:
        if message["type"] == "reset":
            return {"type": "reset"}
        self.clock[0] += self.latency
        return {"type": "chunk", "actions": np.arange(7, dtype=np.float32)[:, None]}


class FakeRobot:
    control_hz = 10.0

    def __init__(self) -> None:
        self.sent: list[float] = []

    def get_observation(self) -> dict[str, np.ndarray]:
        return {"x": np.zeros(1)}

    def send_action(self, action: np.ndarray) -> None:
        self.sent.append(float(action[0]))


def test_control_loop_drops_late_actions_and_counts_missed_deadlines() -> None:
    clock = [0.0]
    sleep = lambda seconds: clock.__setitem__(0, clock[0] + seconds)  # noqa: E731
    robot = FakeRobot()
    loop = ControlLoop(FakeClient(clock, latency=0.15), clock=lambda: clock[0], sleep=sleep)
    stats = loop.run(robot, max_ticks=6, done=lambda: False)
    # Inference takes 1.5 ticks: each chunk's first action (due at its planning tick) is late.
    assert robot.sent == [1.0, 2.0, 3.0, 1.0]
    assert stats.missed_deadlines == 2 and stats.late_dropped == 2 and stats.requests == 2
    on_time = ControlLoop(FakeClient([0.0], latency=0.0), clock=lambda: 0.0, sleep=sleep)
    robot = FakeRobot()
    assert on_time.run(robot, max_ticks=5, done=lambda: False).missed_deadlines == 0
    assert robot.sent == [0.0, 1.0, 2.0, 3.0, 0.0]


def test_sim_controller_runs_an_episode_through_the_server(server) -> None:
    _, url = server
    sim = SimController("robopolicy/Lift-v0", {"obs_type": "state"})
    sim.connect()
    try:
        sim.start_episode(seed=0)
        with PolicyClient(url, api_key="secret") as client:
            stats = ControlLoop(client).run(sim, max_ticks=10, done=lambda: sim.over)
        assert sim.steps == stats.actions_sent == 10 and stats.requests == 3  # 4 actions a chunk
        assert stats.missed_deadlines == 0
    finally:
        sim.disconnect()


# ---- reliability (issue 34): the guard, server limits, the API key ---------------------------
EXTREME = [np.float32(3e38), np.float64(1e300), np.int64(2**62)]


def test_guard_checks_observations_after_the_cast_and_against_the_training_range(caplog) -> None:
    normalizer = Normalizer.fit({"x": torch.tensor([[0.0, 10.0], [2.0, 20.0]])})  # [0,2], [10,20]
    guard = ObsGuard(normalizer, ObsGuardConfig(margin=1.0, action="error"))
    guard.check_obs({"x": torch.tensor([[2.9, 5.5]])})  # 1.9 half-ranges out: within 1 + margin
    overflow = torch.from_numpy(np.full((1, 2), 1e300)).to(torch.float32)  # inf once cast
    with pytest.raises(ObservationError, match=r"'x' is not finite as torch.float32"):
        guard.check_obs({"x": overflow})
    with pytest.raises(
        ObservationError, match=r"'x'\[1\] = 4.612e\+18 is far outside .*\[10, 20\]"
    ):
        guard.check_obs({"x": torch.tensor([[1.0, float(2**62)]])})
    warn = ObsGuard(normalizer, ObsGuardConfig(margin=1.0, action="warn"))
    for _ in range(3):
        warn.check_obs({"x": torch.tensor([[3e38, 15.0]])})
    assert warn.out_of_range == 3 and len(caplog.records) == 1  # logged once, then counted
    guard.check_obs({"image": torch.full((2, 2), 255, dtype=torch.uint8)})  # no statistics
    check_actions(np.zeros(3))
    with pytest.raises(NonFiniteActionError, match="1 of 3 entries"):
        check_actions(torch.tensor([0.0, float("nan"), 1.0]))
    for bad in (ObsGuardConfig(margin=-1.0), ObsGuardConfig(action="ignore")):
        with pytest.raises(ValueError, match="obs_guard"):
            ObsGuard(normalizer, bad)
        with pytest.raises(ValueError, match="obs_guard"):  # before any checkpoint is read
            PolicyServer(ServeConfig(checkpoint="/nonexistent", obs_guard=bad))


def test_server_refuses_observations_that_poison_the_network(server) -> None:
    _, url = server
    with PolicyClient(url, api_key="secret") as client:
        for value in EXTREME:
            for with_time in (True, False):
                obs = lift_obs(with_time)
                obs["object"] = np.full(obs["object"].shape, value)
                with pytest.raises(ServerError, match="not finite as|far outside"):
                    client.request({"type": "chunk" if with_time else "act", "obs": obs})
        assert np.isfinite(client.act(lift_obs())).all()


@pytest.fixture(scope="module")
def warn_server(tmp_path_factory):
    """A server as configured by default, only warning about observations: the action guard
    alone must hold."""
    run = lift_checkpoint(tmp_path_factory.mktemp("run"))
    cfg = ServeConfig(checkpoint=str(run), port=0)
    return f"ws://127.0.0.1:{PolicyServer(cfg).start_background()}"


def test_server_never_sends_non_finite_actions_and_drops_the_poisoned_plan(warn_server) -> None:
    poisoned = lift_obs()
    poisoned["object"] = np.full(10, np.float32(3e38))  # finite, but NaN out of the network
    with PolicyClient(warn_server) as client:
        with pytest.raises(ServerError, match="non-finite action chunk"):
            client.chunk({k: np.stack([v, v]) for k, v in poisoned.items()})
        with pytest.raises(ServerError, match="non-finite action"):
            client.act(poisoned)
        for _ in range(8):  # the rest of the poisoned chunk must not serve these
            assert np.isfinite(client.act(lift_obs())).all()


class NaNClient(FakeClient):
    def request(self, message: dict) -> dict:
        reply = super().request(message)
        if message["type"] == "chunk":
            reply["actions"][2] = np.nan
        return reply


def test_control_loop_never_sends_non_finite_actions_or_observations() -> None:
    robot = FakeRobot()
    loop = ControlLoop(NaNClient([0.0], latency=0.0), clock=lambda: 0.0, sleep=lambda s: None)
    with pytest.raises(NonFiniteActionError):
        loop.run(robot, max_ticks=5, done=lambda: False)
    assert robot.sent == []  # not even the finite actions of the poisoned chunk
    robot.get_observation = lambda: {"x": np.full(1, 1e300)}
    loop = ControlLoop(FakeClient([0.0], latency=0.0), clock=lambda: 0.0, sleep=lambda s: None)
    with pytest.raises(ObservationError, match="'x' is not finite"):
        loop.run(robot, max_ticks=5, done=lambda: False)
    assert robot.sent == []


class NaNAgent:
    name = "nan"

    def prepare(self, envs) -> None:
        pass

    def reset(self, env_mask) -> None:
        pass

    def act(self, obs, envs) -> np.ndarray:
        return np.full((len(env_mask_of(obs)), 4), np.nan, dtype=np.float32)

    def metrics(self) -> dict:
        return {}


def env_mask_of(obs: dict) -> np.ndarray:
    return next(iter(obs.values()))


def test_eval_never_steps_non_finite_actions(tmp_path) -> None:
    from robopolicy.sim.evaluate import evaluate

    with pytest.raises(NonFiniteActionError):
        evaluate("robopolicy/Lift-v0", NaNAgent(), n_episodes=1, num_envs=1, progress=False)
    policy = PolicyServer(ServeConfig(checkpoint=str(lift_checkpoint(tmp_path)))).policy
    agent = type("Stub", (NaNAgent,), {"policy": policy})()
    guarded = GuardedAgent(agent, ObsGuardConfig(action="error"))
    obs = {k: np.zeros((1, *v), np.float32) for k, v in LIFT_OBS.items()}
    obs["object"][0, 0] = 3e38
    with pytest.raises(ObservationError, match="far outside"):
        guarded.act(obs, None)


@pytest.fixture()
def limited_server(tmp_path):
    cfg = ServeConfig(
        checkpoint=str(lift_checkpoint(tmp_path)),
        port=0,
        max_connections=2,
        send_buffer_bytes=1024,
        send_timeout_s=0.5,
        idle_timeout_s=1.0,
    )
    server = PolicyServer(cfg)
    return server, f"ws://127.0.0.1:{server.start_background()}"


def test_server_caps_connections_and_closes_idle_ones(limited_server) -> None:
    _, url = limited_server
    first, second = PolicyClient(url), PolicyClient(url)
    with pytest.raises(InvalidStatus, match="503"):
        PolicyClient(url)
    first.close()
    with PolicyClient(url) as third:
        assert third.chunk(lift_obs(True)).shape == (7, 4)
        time.sleep(1.5)  # silent past idle_timeout_s
        with pytest.raises(ConnectionClosed, match="idle"):
            third.request({"type": "ping"})
    second.close()


def test_server_drops_a_client_that_does_not_read(limited_server) -> None:
    server, url = limited_server
    sender = NonReadingClient(url, timeout=0.5)
    frame = pack({"type": "act", "obs": 1})  # answered with an error, no inference
    with contextlib.suppress(OSError):  # blocks once the server stops reading, then resets
        deadline = time.time() + 20
        while time.time() < deadline:
            sender.send(frame)
    sender.close()
    deadline = time.time() + 5
    while server.dropped == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert server.dropped == 1
    with PolicyClient(url) as client:
        assert client.chunk(lift_obs(True)).shape == (7, 4)


def test_api_key_comes_from_a_file_or_the_environment_not_the_command_line(
    tmp_path, monkeypatch, capsys
) -> None:
    run = lift_checkpoint(tmp_path / "run")
    assert main(["serve", str(run), "api_key=hunter2"]) == 2
    err = capsys.readouterr().err
    assert "robopolicy serve: error: api_key= on the command line" in err and "ps" in err
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("ROBOPOLICY_API_KEY", "from-env")
    assert resolve_api_key(ServeConfig(api_key_file=str(key_file))) == "from-file"
    assert resolve_api_key(ServeConfig()) == "from-env"
    monkeypatch.delenv("ROBOPOLICY_API_KEY")
    assert resolve_api_key(ServeConfig()) is None
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="api_key_file .* is empty"):
        resolve_api_key(ServeConfig(api_key_file=str(key_file)))
    with pytest.raises(FileNotFoundError, match="api_key_file"):
        resolve_api_key(ServeConfig(api_key_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="not both"):
        resolve_api_key(ServeConfig(api_key="a", api_key_file=str(key_file)))
    key_file.write_text("from-file")
    server = PolicyServer(ServeConfig(checkpoint=str(run), port=0, api_key_file=str(key_file)))
    url = f"ws://127.0.0.1:{server.start_background()}"
    with pytest.raises(InvalidStatus, match="401"):
        PolicyClient(url)
    with PolicyClient(url, api_key="from-file") as client:
        assert client.request({"type": "ping"})["type"] == "pong"
    serve_help = build_parser()._subparsers._group_actions[0].choices["serve"].description
    assert "api_key_file" in serve_help and "ROBOPOLICY_API_KEY" in serve_help
