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


def test_humanoid_million_transitions_fit_in_1_7_gb():
    buf = ReplayBuffer(1_000_000, 1, (376,), 17)
    assert buf.nbytes <= 1.7e9, buf.nbytes
    assert set(buf.storage.keys()) == {"obs", "action", "reward", "terminated", "valid"}  # no next_obs copy


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
