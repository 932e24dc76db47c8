import numpy as np
import torch

from rl_energy.buffers import ReplayBuffer


def fill(buf: ReplayBuffer, steps: int, episode_len: int = 5) -> None:
    """Each env streams obs = [env, t]; every `episode_len` steps an autoreset slot (valid=False)."""
    n = buf.num_envs
    for t in range(steps):
        obs = np.stack([[e, t] for e in range(n)]).astype(np.float32)
        valid = np.full(n, t % episode_len != 0 or t == 0)
        buf.add(obs, np.full((n, 1), t, np.float32), np.full(n, t, np.float32), np.zeros(n, bool), valid)


def test_a_humanoid_transition_is_stored_once_in_compact_dtypes():
    """1M Humanoid transitions fit in 1.7 GB: one float32 obs row per transition (next_obs is the next
    row, not a copy) and one-byte flags; measured on the tensors a small buffer really allocates."""
    small, large = ReplayBuffer(1_000, 1, (376,), 17), ReplayBuffer(2_000, 1, (376,), 17)
    per_transition = (large.nbytes - small.nbytes) / 1_000
    assert per_transition == 4 * (376 + 17 + 1) + 2, per_transition  # obs, action, reward; terminated, valid
    assert per_transition * 1_000_000 <= 1.7e9
    dtypes = {k: v.dtype for k, v in small.storage.items()}
    assert dtypes == {"obs": torch.float32, "action": torch.float32, "reward": torch.float32,
                      "terminated": torch.bool, "valid": torch.bool}
    obs = np.random.default_rng(0).normal(size=(1, 376)).astype(np.float32)
    small.add(obs, np.zeros((1, 17), np.float32), np.ones(1, np.float32), np.zeros(1, bool), np.ones(1, bool))
    small.add(obs + 1, np.zeros((1, 17), np.float32), np.ones(1, np.float32), np.zeros(1, bool), np.ones(1, bool))
    batch = small.sample(4)
    assert torch.equal(batch["obs"][0], torch.as_tensor(obs[0])) and torch.equal(batch["next_obs"][0],
                                                                                  torch.as_tensor(obs[0] + 1))


def test_next_obs_is_the_same_envs_next_observation_and_invalid_slots_are_never_sampled():
    buf = ReplayBuffer(64, 2, (2,), 1, seed=0)
    fill(buf, 200)  # wraps around the ring several times
    batch = buf.sample(4096)
    obs, nxt = batch["obs"], batch["next_obs"]
    assert torch.equal(obs[:, 0], nxt[:, 0])  # same env
    assert torch.equal(nxt[:, 1], obs[:, 1] + 1)  # its next step
    assert torch.equal(batch["action"][:, 0], obs[:, 1])
    assert not ((obs[:, 1] % 5) == 0).any()  # autoreset slots excluded
    oldest = 200 - 32
    assert obs[:, 1].min() >= oldest and obs[:, 1].max() <= 198  # newest row has no next obs yet


def test_state_round_trip_restores_content_and_sampler():
    a = ReplayBuffer(100, 1, (2,), 1, seed=3)
    fill(a, 60)
    b = ReplayBuffer(100, 1, (2,), 1, seed=99)
    b.load_state_dict(a.state_dict())
    assert len(a) == len(b)
    for key in ("obs", "next_obs", "action", "reward"):
        torch.testing.assert_close(a.sample(16)[key], b.sample(16)[key])
