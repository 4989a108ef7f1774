"""EXPO (Dong et al. 2025, expressive policy optimisation): keep training the expressive base by
imitation, and put a light edit policy and an on-the-fly argmax-Q choice on top of its samples.

One agent step is one executed chunk (as in DSRL: the base plans chunks)::

    state    s = the base's observation features. Its encoder stays frozen (the denoiser keeps
             learning), so the features stored in the replay stay valid for the whole run
    base     a_1..a_N ~ pi_base(.|s): N sampled chunks, their executed part (H_a x A)
    edit     e_i = beta * tanh(u_i), u_i ~ N(mu(s, a_i), sigma(s, a_i));  a~_i = clip(a_i + e_i)
    select   a* = argmax over {a_1..a_N, a~_1..a~_N} of mean_k Q_k(s, .)   (the on-the-fly policy)
    execute  a* step by step, stopping where the episode ends; the reward is DSRL's (r - 1 per
             executed env step, summed over the chunk: ``dsrl_reward``)

Each critic update (``updates_per_step`` per agent step, batches ``demo_fraction`` demos):

    critic  y = R + discount * min_{random pair} Q_targ(s', a*'),  a*' = select at s' by the
            online critic (sampled edits, as when acting); no entropy term (the chosen
            action may be an unedited base sample, which has no edit log-probability)
    edit    L = alpha log pi(e|s, a) - min_k Q_k(s, clip(a + e)),  a ~ pi_base(.|s)  (agent.actor_q)
    alpha   L = -alpha (log pi + H_target)   (SAC's temperature; H_target as ``Learner``'s)
    base    L = pi_base.compute_loss(windows of demos and of online episodes), every
            ``expo.base_update_every`` critic updates: imitating the executed, Q-chosen chunks
            is what moves the base toward higher value. Online episodes count only up to their
            first frame outside the demos' normalised range (``InRange``); with
            ``expo.base_ema`` the loss trains a copy and the acting base follows its average

Selection reduces the heads by their mean: the argmax over 2N candidates already favours
candidates whose Q is overestimated, and the mean of all heads is the estimate with the least
noise for it to exploit. Pessimism enters where values are backed up (the min over a random pair
of target heads, as everywhere in the core) and in the edit's loss.

The checkpoint is one policy: the trained base (``base.*``, its normaliser, and its ``policy``
and ``shapes`` config sections), the edit policy (``edit.*``) and the critic (``critic.*``);
``load_expo_agent`` rebuilds it for eval, serving and export.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from robopolicy.data.sequence import SequenceWindows
from robopolicy.inference.executor import threshold_discrete
from robopolicy.inference.history import ObservationHistories, obs_tensor
from robopolicy.rl.agent_config import AgentConfig, validate_agent_config
from robopolicy.rl.config import ExpoConfig
from robopolicy.rl.dsrl import NoiseMDP
from robopolicy.rl.learner import SavesTrainingState, _polyak, _step, regress_critic
from robopolicy.rl.networks import CriticEnsemble, GaussianActor, min_of_random_subset
from robopolicy.rl.replay import Batch, ReplayBuffer


# ---- the on-the-fly policy ----------------------------------------------------------------------
@torch.no_grad()
def base_chunks(policy, features: Tensor, n: int, discrete_dims: Sequence[int]) -> Tensor:
    """N chunks sampled from the base per state: (B, N, H_a * A), executed part, open/close
    commands thresholded to +-1 as executed."""
    rows = features.shape[0]
    noise = torch.randn(rows * n, policy.pred_horizon, policy.action_dim, device=features.device)
    chunk = policy.chunk_from_features(features.repeat_interleave(n, dim=0), noise)
    first = policy.obs_horizon - 1  # the chunk index aligned with the newest observation
    executed = threshold_discrete(chunk[:, first : first + policy.action_horizon], discrete_dims)
    return executed.reshape(rows, n, -1)


def edit_input(features: Tensor, chunks: Tensor) -> Tensor:
    """The edit policy's input for each of N chunks per state: (B * N, features + chunk)."""
    n = chunks.shape[1]
    return torch.cat([features.repeat_interleave(n, dim=0), chunks.flatten(0, 1)], dim=-1)


def candidates(
    policy, edit: nn.Module, features: Tensor, n: int, discrete_dims, explore: bool
) -> Tensor:
    """N base chunks and their N edits, as executed: (B, 2N, H_a * A). ``explore``: sampled
    edits (acting in training, TD targets); else the edit policy's mean (eval, serving)."""
    base = base_chunks(policy, features, n, discrete_dims)
    shift = edit(edit_input(features, base), deterministic=not explore)[0].reshape_as(base)
    edited = (base + shift).clamp(-1.0, 1.0)
    both = torch.cat([base, edited], dim=1)
    shape = both.shape
    per_step = both.reshape(*shape[:2], policy.action_horizon, policy.action_dim)
    return threshold_discrete(per_step, discrete_dims).reshape(shape)


def select(critic: CriticEnsemble, features: Tensor, options: Tensor) -> Tensor:
    """argmax over each state's candidates (B, C, D) of the heads' mean Q: (B, D)."""
    rows, count = options.shape[:2]
    q = critic(features.repeat_interleave(count, dim=0), options.flatten(0, 1)).mean(dim=0)
    best = q.reshape(rows, count).argmax(dim=1)
    return options[torch.arange(rows, device=options.device), best]


@torch.no_grad()
def on_the_fly(
    policy, edit, critic, features: Tensor, n: int, discrete_dims, explore: bool
) -> Tensor:
    """The on-the-fly policy's chunk for each state (B, H_a * A)."""
    return select(critic, features, candidates(policy, edit, features, n, discrete_dims, explore))


# ---- the learner ---------------------------------------------------------------------------------
class ExpoLearner(SavesTrainingState, nn.Module):
    """The base (its denoiser trained by imitation), the edit policy (``actor``: SAC with an
    auto-tuned temperature), the LayerNorm critic ensemble and its target."""

    def __init__(
        self, cfg: AgentConfig, expo: ExpoConfig, policy, discrete_dims: Sequence[int] = ()
    ) -> None:
        super().__init__()
        validate_agent_config(cfg)
        if cfg.algo != "sac":
            raise ValueError(f"EXPO's edit policy is SAC's; agent.algo is {cfg.algo!r}")
        self.cfg, self.expo = cfg, expo
        self.discrete_dims = tuple(discrete_dims)
        self.policy = policy.eval()  # the base that acts, backs up and is checkpointed
        self.policy.obs_encoder.requires_grad_(False)  # the replay's features stay valid
        # with expo.base_ema the imitation trains a copy and the acting base is its average
        self.imitated = copy.deepcopy(policy) if expo.base_ema > 0 else None
        self.obs_dim = policy.obs_encoder.out_dim
        self.action_dim = policy.action_horizon * policy.action_dim  # an executed chunk
        self.actor = GaussianActor(
            self.obs_dim + self.action_dim,
            self.action_dim,
            cfg.hidden_dim,
            cfg.num_layers,
            expo.edit_scale,
            cfg.activation,
        )
        self.actor_ema = (
            copy.deepcopy(self.actor).requires_grad_(False) if cfg.actor_ema > 0 else None
        )
        self.critic = CriticEnsemble(
            self.obs_dim,
            self.action_dim,
            cfg.critic_heads,
            cfg.hidden_dim,
            cfg.num_layers,
            cfg.activation,
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        # in [-1, 1] units, moved to the edit's scale beta as ``Learner`` does
        unit_target = cfg.target_entropy if cfg.target_entropy is not None else -self.action_dim
        self.target_entropy = unit_target + self.action_dim * math.log(expo.edit_scale)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        trainable = [p for p in self.imitated_base.parameters() if p.requires_grad]
        self.base_optim = torch.optim.AdamW(
            trainable, lr=expo.base_lr, betas=(0.95, 0.999), weight_decay=1e-6
        )
        self.critic_updates = 0
        self.imitation: ImitationData | None = None  # set by the run: the base's windows

    @property
    def imitated_base(self):
        """The base the imitation trains: ``policy`` itself, or its copy with expo.base_ema."""
        return self.imitated if self.imitated is not None else self.policy

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp().detach()

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    def policy_actor(self) -> nn.Module:
        """The edit policy that evals run and checkpoints keep (the average with actor_ema)."""
        return self.actor_ema if self.actor_ema is not None else self.actor

    def scale_learning_rates(self, factor: float) -> None:
        """The edit policy's and critic's rates at ``factor`` times the configured ones (the
        base's imitation keeps its own)."""
        for optim, initial in (
            (self.actor_optim, self.cfg.actor_lr),
            (self.critic_optim, self.cfg.critic_lr),
        ):
            for group in optim.param_groups:
                group["lr"] = initial * factor

    # ---- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor, explore: bool) -> Tensor:
        """The on-the-fly policy's chunks for a batch of features, on ``obs``'s device."""
        features = obs.to(self.device)
        n = self.expo.num_samples
        chosen = on_the_fly(
            self.policy, self.actor, self.critic, features, n, self.discrete_dims, explore
        )
        return chosen.to(obs.device)

    @torch.no_grad()
    def base_action(self, obs: Tensor) -> Tensor:
        """One sample of the base per state (the warm-up's actions)."""
        chunks = base_chunks(self.policy, obs.to(self.device), 1, self.discrete_dims)
        return chunks[:, 0].to(obs.device)

    # ---- learning --------------------------------------------------------------------------
    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        """One critic step; an edit (and temperature) step with ``update_actor``; the base's
        imitation step when due."""
        metrics = self._update_critic(batch)
        self.critic_updates += 1
        if update_actor:
            metrics.update(self._update_edit(batch.obs))
            if self.actor_ema is not None:
                _polyak(self.actor, self.actor_ema, self.cfg.actor_ema)
        _polyak(self.critic, self.critic_target, self.cfg.tau)
        if self.imitation is not None and self.critic_updates % self.expo.base_update_every == 0:
            metrics.update(self._update_base(self.imitation.sample(self.device)))
            metrics.update(self.imitation.metrics())
        return metrics

    def _update_critic(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            next_action = self.act(batch.next_obs, explore=True)
            q_next = min_of_random_subset(
                self.critic_target(batch.next_obs, next_action), cfg.target_subset
            )
        return regress_critic(self.critic, self.critic_optim, batch, q_next, cfg)

    def _update_edit(self, features: Tensor) -> dict[str, float]:
        cfg = self.cfg
        base = base_chunks(self.policy, features, 1, self.discrete_dims)
        shift, log_prob = self.actor(edit_input(features, base))
        q = self.critic(features, (base[:, 0] + shift).clamp(-1.0, 1.0))
        q = q.min(dim=0).values if cfg.actor_q == "min" else q.mean(dim=0)
        loss = (self.alpha * log_prob - q).mean()
        _step(self.actor_optim, loss, self.actor, cfg.grad_clip)
        alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()
        return {
            "actor_loss": loss.item(),
            "alpha": self.alpha.item(),
            "entropy": -log_prob.mean().item(),
            "edit_rms": shift.pow(2).mean().sqrt().item(),
        }

    def _update_base(self, batch: dict[str, Any]) -> dict[str, float]:
        base = self.imitated_base
        base.train()  # the encoder's augmentation (random crop) for imitation
        try:
            loss = base.compute_loss(batch)
            _step(self.base_optim, loss, base, self.cfg.grad_clip)
        finally:
            base.eval()
        if self.imitated is not None:
            _polyak(self.imitated, self.policy, self.expo.base_ema)
        return {"base_loss": loss.item()}

    def _optimizer_names(self) -> list[str]:
        return ["actor_optim", "critic_optim", "alpha_optim", "base_optim"]


# ---- the MDP: chunks chosen by the learner, episodes kept for imitation -------------------------
class ExpoBase:
    """Each sub-env's observation history, its features (the base's frozen encoder) and the
    observations of its running episode (for the base's imitation once it ends). The agent's
    action is the executed chunk itself: ``decode`` passes it through."""

    def __init__(self, policy, num_envs: int) -> None:
        self.policy = policy
        self.histories = ObservationHistories(policy.obs_horizon, num_envs)
        self.recorded: list[list[dict[str, np.ndarray]]] = [[] for _ in range(num_envs)]
        self.action_horizon = policy.action_horizon
        self.feature_dim = policy.obs_encoder.out_dim
        self.chunk_dim = self.noise_dim = policy.action_horizon * policy.action_dim

    def reset(self, mask: np.ndarray | None = None) -> None:
        for i in range(len(self.histories)):
            if mask is None or mask[i]:
                self.histories.clear(i)
                self.recorded[i] = []

    def push(self, obs: dict[str, np.ndarray], rows: Sequence[int]) -> None:
        for i in rows:
            self.push_row(i, {k: obs[k][i] for k in self.policy.shapes.obs})

    def push_row(self, i: int, obs: dict[str, np.ndarray]) -> None:
        kept = {k: np.array(obs[k]) for k in self.policy.shapes.obs}
        self.recorded[i].append(kept)
        self.histories.push(i, {k: obs_tensor(v) for k, v in kept.items()})

    @torch.no_grad()
    def features(self, rows: Sequence[int]) -> Tensor:
        stacked = self.histories.stacked(list(rows))
        device = self.policy.device
        return self.policy.encode_obs({k: v.to(device) for k, v in stacked.items()})

    def decode(self, features: Tensor, action: Tensor) -> Tensor:
        return action


@dataclass
class OnlineEpisode:
    """An executed episode as imitation data: what the base saw and the actions executed."""

    obs: dict[str, np.ndarray]  # (L, ...) per key
    actions: np.ndarray  # (L, A)

    @property
    def num_samples(self) -> int:
        return len(self.actions)


class InRange:
    """Where an online episode leaves the states the base was fitted on: the first frame with a
    low-dim feature whose normalised value exceeds ``limit`` (the demos span [-1, 1]).

    The base's normaliser is fitted on the demos, so a feature the demos barely vary (a scarce
    dataset's object orientation: a span of 0.004) maps an online value a little outside that
    span to hundreds. Imitating such windows makes their huge inputs dominate the base's
    gradient and unlearns the demos; leaving them out keeps the imitation on states the base can
    represent (EXPO's datasets cover the online states, so its reference needs no such cut)."""

    def __init__(self, normalizer, limit: float) -> None:
        self.normalizer, self.limit = normalizer, limit

    def prefix(self, obs: dict[str, np.ndarray]) -> int:
        """How many leading frames of ``obs`` (arrays of (L, ...)) lie within the limit."""
        length = len(next(iter(obs.values())))
        inside = np.ones(length, dtype=bool)
        for key in set(self.normalizer.keys) & set(obs):
            scaled = self.normalizer.normalize(key, torch.as_tensor(obs[key], dtype=torch.float32))
            inside &= scaled.abs().reshape(length, -1).amax(dim=1).numpy() <= self.limit
        outside = np.flatnonzero(~inside)
        return int(outside[0]) if len(outside) else length


class OnlineEpisodes:
    """The run's finished episodes, indexed as training windows in blocks of ``refresh`` env
    steps (re-indexing concatenates every episode: not once per episode). At each re-index the
    oldest episodes beyond ``capacity`` env steps are dropped, as the replay drops its oldest."""

    def __init__(
        self,
        obs_keys: Sequence[str],
        horizons: tuple[int, int, int],
        refresh: int,
        capacity: int,
        in_range: InRange | None = None,
    ) -> None:
        self.obs_keys = list(obs_keys)
        self.horizons = horizons  # obs, pred, action
        self.refresh = refresh
        self.capacity = capacity
        self.in_range = in_range
        self.episodes: list[OnlineEpisode] = []
        self._windows: SequenceWindows | None = None
        self._indexed = 0  # episodes in the windows
        self.steps_seen = 0  # env steps of every finished episode
        self.steps_kept = 0  # of those, the steps kept for imitation

    def add(self, obs: list[dict[str, np.ndarray]], actions: list[np.ndarray]) -> None:
        """Keep the episode up to its first frame outside the base's range (``in_range``)."""
        steps = len(actions)
        self.steps_seen += steps
        stacked = {k: np.stack([o[k] for o in obs[:steps]]) for k in self.obs_keys} if steps else {}
        if steps and self.in_range is not None:
            steps = self.in_range.prefix(stacked)
            stacked = {k: v[:steps] for k, v in stacked.items()}
        if steps == 0:
            return
        self.steps_kept += steps
        kept = np.stack(actions[:steps]).astype(np.float32)
        self.episodes.append(OnlineEpisode(stacked, kept))

    @property
    def kept_fraction(self) -> float:
        return self.steps_kept / self.steps_seen if self.steps_seen else 1.0

    def windows(self) -> SequenceWindows | None:
        """The windows of the episodes indexed so far (None before the first block)."""
        pending = sum(e.num_samples for e in self.episodes[self._indexed :])
        if pending >= self.refresh:
            total = sum(e.num_samples for e in self.episodes)
            while total > self.capacity and len(self.episodes) > 1:
                total -= self.episodes.pop(0).num_samples
            self._windows = SequenceWindows(self.episodes, self.obs_keys, *self.horizons)
            self._indexed = len(self.episodes)
        return self._windows

    def state_dict(self) -> dict[str, Tensor]:
        lengths = torch.tensor([e.num_samples for e in self.episodes], dtype=torch.long)
        state = {
            "online_lengths": lengths,
            "online_indexed": torch.tensor(self._indexed),
            "online_steps": torch.tensor([self.steps_seen, self.steps_kept]),
        }
        if self.episodes:
            state["online_actions"] = torch.from_numpy(
                np.concatenate([e.actions for e in self.episodes])
            )
            for k in self.obs_keys:
                state[f"online_obs.{k}"] = torch.from_numpy(
                    np.concatenate([e.obs[k] for e in self.episodes])
                )
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.episodes = []
        start = 0
        for length in state["online_lengths"].tolist():
            end = start + length
            obs = {k: state[f"online_obs.{k}"][start:end].numpy() for k in self.obs_keys}
            self.episodes.append(OnlineEpisode(obs, state["online_actions"][start:end].numpy()))
            start = end
        self._indexed = 0
        self._windows = None
        if "online_steps" in state:  # runs saved before the range limit have no counts
            self.steps_seen, self.steps_kept = (int(x) for x in state["online_steps"])
        indexed = int(state["online_indexed"])
        if indexed:
            self._windows = SequenceWindows(self.episodes[:indexed], self.obs_keys, *self.horizons)
            self._indexed = indexed


class ExpoMDP(NoiseMDP):
    """DSRL's chunk MDP with the chunk as the action; each finished episode goes to
    ``online`` (the base's imitation data)."""

    def __init__(
        self, envs: gym.vector.SyncVectorEnv, seeds, base: ExpoBase, online: OnlineEpisodes
    ):
        super().__init__(envs, seeds, base, chunk_critic=True)
        self.online = online

    def _episodes_ended(self, ended: np.ndarray) -> None:
        for i in np.flatnonzero(ended):
            self.online.add(self.base.recorded[i], self.episode_actions[i])

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, plain = super().state_dict()
        return {**tensors, **self.online.state_dict()}, plain

    def restore(self, tensors: dict[str, Tensor], plain: dict[str, Any]) -> Tensor:
        self.online.load_state_dict(tensors)
        return super().restore(tensors, plain)


# ---- the base's imitation data and the critic's demonstrations ---------------------------------
class ImitationData:
    """Batches of training windows for the base: ``demo_fraction`` from the demonstrations,
    the rest from the online episodes (all from the demos until the first block is indexed)."""

    def __init__(
        self,
        demos: SequenceWindows,
        online: OnlineEpisodes,
        batch_size: int,
        demo_fraction: float,
    ) -> None:
        self.demos, self.online = demos, online
        self.batch_size, self.demo_fraction = batch_size, demo_fraction

    def metrics(self) -> dict[str, float]:
        return {"online_kept_fraction": self.online.kept_fraction}

    def sample(self, device: torch.device) -> dict[str, Any]:
        online = self.online.windows()
        n_online = 0 if online is None else round(self.batch_size * (1 - self.demo_fraction))
        parts = [(self.demos, self.batch_size - n_online), (online, n_online)]
        batches = [w.get_batch(torch.randint(0, len(w), (n,))) for w, n in parts if n > 0]
        obs = {k: torch.cat([b["obs"][k] for b in batches]).to(device) for k in batches[0]["obs"]}
        return {"obs": obs, "actions": torch.cat([b["actions"] for b in batches]).to(device)}


@torch.no_grad()
def demo_chunk_buffer(
    policy,
    episodes,
    discrete_dims: Sequence[int],
    reward_offset: float,
    per_env_step: bool,
) -> ReplayBuffer:
    """Demonstrations as chunk transitions (features at t, the demo's executed chunk from t,
    its summed reward, features after it), for the critic's demo share of each batch.

    Every start t is used; the chunks that start at t = o, o + H_a, o + 2 H_a, ... form one
    chain (stored as one episode), so that n-step returns follow chunk after chunk. A chunk
    that runs past the episode's end pads with its last action (as training windows do) and
    sums only the executed steps' rewards; an episode whose last step is done is terminal."""
    horizon, first = policy.action_horizon, policy.obs_horizon - 1
    keys = list(policy.shapes.obs)
    total = sum(len(e.actions) for e in episodes)
    buffer = ReplayBuffer(policy.obs_encoder.out_dim, horizon * policy.action_dim, max(total, 1))
    for episode in episodes:
        steps = len(episode.actions)
        frames = {k: np.concatenate([episode.obs[k], episode.next_obs[k][-1:]]) for k in keys}
        t = np.arange(steps + 1)
        history = np.clip(t[:, None] + np.arange(-first, 1)[None], 0, steps)  # (L + 1, T_obs)
        features = torch.cat(
            [
                policy.encode_obs(
                    {k: obs_tensor(frames[k][history[rows]]).to(policy.device) for k in keys}
                ).cpu()
                for rows in np.array_split(np.arange(steps + 1), max(1, (steps + 1) // 256))
            ]
        )
        idx = np.clip(t[:steps, None] + np.arange(horizon)[None], 0, steps - 1)  # (L, H_a)
        chunks = torch.as_tensor(episode.actions[idx], dtype=torch.float32)
        chunks = threshold_discrete(chunks, discrete_dims).flatten(1)
        executed = np.minimum(horizon, steps - t[:steps])
        rewards = np.array(
            [episode.rewards[s : s + m].sum() for s, m in zip(t[:steps], executed, strict=True)]
        )
        rewards = rewards + reward_offset * (executed if per_env_step else 1)
        nexts = features[torch.as_tensor(t[:steps] + executed)]
        for offset in range(min(horizon, steps)):
            chain = torch.arange(offset, steps, horizon)
            buffer.add_episode(
                features[chain],
                chunks[chain],
                torch.as_tensor(rewards[chain.numpy()], dtype=torch.float32),
                nexts[chain],
                terminated=bool(episode.dones[-1]),
            )
    return buffer


# ---- the trained policy as one rollout agent (eval, serving) -----------------------------------
class ExpoAgent:
    """The base, the edit policy and the critic as a rollout agent: each sub-env plans a chunk
    with the on-the-fly policy (N base samples and their mean edits, the highest mean Q) and
    executes it step by step."""

    def __init__(
        self, policy, edit: nn.Module, critic: CriticEnsemble, num_samples: int, name: str = "expo"
    ) -> None:
        self.policy = policy.eval()
        self.edit = edit.eval()
        self.critic = critic.eval()
        self.num_samples = num_samples
        self.name = name
        self.discrete_dims: tuple[int, ...] = ()
        self.histories: ObservationHistories | None = None
        self.queues: list[deque] = []

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        self.setup(envs.num_envs, envs.get_attr("discrete_action_dims")[0])

    def setup(self, num_envs: int, discrete_dims) -> None:
        self.discrete_dims = tuple(discrete_dims)
        self.histories = ObservationHistories(self.policy.obs_horizon, num_envs)
        self.queues = [deque() for _ in range(num_envs)]

    def session(self) -> ExpoAgent:
        """A new agent with its own episode state, sharing the networks."""
        return ExpoAgent(self.policy, self.edit, self.critic, self.num_samples, self.name)

    def reset(self, env_mask: np.ndarray) -> None:
        for i in np.flatnonzero(env_mask):
            self.histories.clear(i)
            self.queues[i].clear()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        for i in range(len(self.queues)):
            self.histories.push(i, {k: obs_tensor(obs[k][i]) for k in self.policy.shapes.obs})
        empty = [i for i, queue in enumerate(self.queues) if not queue]
        if empty:
            stacked = self.histories.stacked(empty)
            device = self.policy.device
            features = self.policy.encode_obs({k: v.to(device) for k, v in stacked.items()})
            chunks = on_the_fly(
                self.policy,
                self.edit,
                self.critic,
                features,
                self.num_samples,
                self.discrete_dims,
                explore=False,
            )
            chunks = chunks.cpu().reshape(len(empty), -1, self.policy.action_dim)
            for row, i in enumerate(empty):
                self.queues[i].extend(chunks[row])
        return torch.stack([queue.popleft() for queue in self.queues]).numpy()

    def metrics(self) -> dict[str, float]:
        return {}


# ---- the checkpoint ---------------------------------------------------------------------------
PARTS = ("base.", "edit.", "critic.")


def checkpoint_weights(learner: ExpoLearner) -> dict[str, Tensor]:
    """``base.*`` (the normaliser as ``normalizer.*``, which the checkpoint keeps apart),
    ``edit.*`` (the averaged edit policy with actor_ema) and ``critic.*``."""
    weights: dict[str, Tensor] = {}
    for key, value in learner.policy.state_dict().items():
        weights[key if key.startswith("normalizer.") else f"base.{key}"] = value
    weights.update({f"edit.{k}": v for k, v in learner.policy_actor().state_dict().items()})
    weights.update({f"critic.{k}": v for k, v in learner.critic.state_dict().items()})
    return weights


def load_expo_agent(path, config: dict, device: str | torch.device = "cpu") -> ExpoAgent:
    """An EXPO checkpoint -> its rollout agent; loading is strict, part by part."""
    from omegaconf import OmegaConf

    from robopolicy.checkpoint import CheckpointError, load_state, load_strict
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy

    for section in ("policy", "shapes"):
        if section not in config:
            raise CheckpointError(f"{path}/config.yaml: an EXPO checkpoint needs {section!r}")
    policy_cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig), config["policy"])
    shapes = OmegaConf.merge(OmegaConf.structured(PolicyShapes), config["shapes"])
    normalizer = Normalizer.from_state_dict(load_state(path, "normalizer"))
    policy = make_policy(OmegaConf.to_object(policy_cfg), OmegaConf.to_object(shapes), normalizer)
    weights = load_state(path, "model")
    unexpected = sorted(k for k in weights if not k.startswith(PARTS))
    if unexpected:
        raise CheckpointError(f"{path}/model.safetensors: unexpected keys {unexpected[:5]}")

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}

    stats = {f"normalizer.{k}": v for k, v in normalizer.state_dict().items()}
    load_strict(policy, {**part("base."), **stats}, f"{path}/model.safetensors (base.)")
    agent_cfg = AgentConfig(**config["finetune"]["agent"])
    expo = ExpoConfig(**config["finetune"]["expo"])
    chunk_dim = policy.action_horizon * policy.action_dim
    feature_dim = policy.obs_encoder.out_dim
    edit = GaussianActor(
        feature_dim + chunk_dim,
        chunk_dim,
        agent_cfg.hidden_dim,
        agent_cfg.num_layers,
        expo.edit_scale,
        agent_cfg.activation,
    )
    load_strict(edit, part("edit."), f"{path}/model.safetensors (edit.)")
    critic = CriticEnsemble(
        feature_dim,
        chunk_dim,
        agent_cfg.critic_heads,
        agent_cfg.hidden_dim,
        agent_cfg.num_layers,
        agent_cfg.activation,
    )
    load_strict(critic, part("critic."), f"{path}/model.safetensors (critic.)")
    return ExpoAgent(policy.to(device), edit.to(device), critic.to(device), expo.num_samples)
