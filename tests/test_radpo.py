"""DPO / TDPO / Ra-DPO losses (agents/radpo.py), the tiny GPT (rl_energy/lm.py) and the sentiment MDP
(envs/sentiment_preference.py); digest papers/one-step-tasks.md §13."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tensordict import TensorDict

from rl_energy.agents.radpo import (
    DPO,
    LOSSES,
    TDPO,
    PairStats,
    PreferenceAgent,
    PreferenceConfig,
    RaDPO,
    RaDPOConfig,
    preference_loss,
    seq_kl,
    seq_risk,
    vocab_quantile,
)
from rl_energy.config import resolve_config
from rl_energy.envs import sentiment_preference as sp
from rl_energy.envs.sentiment_preference import SentimentPreferenceEnv, vader_compound
from rl_energy.errors import ConfigError
from rl_energy.lm import GPTConfig, TinyGPT, generate, token_logprobs

V, P, T = 11, 3, 4


def _spaces(vocab: int = V, length: int = P + T):
    import gymnasium as gym

    return gym.spaces.Box(0, vocab - 1, shape=(length,), dtype=np.int64), gym.spaces.Discrete(vocab)


def _agent(loss: str = "dpo", cls: type = PreferenceAgent, **kw) -> PreferenceAgent:
    torch.manual_seed(0)
    cfg = cls.Config(loss=loss, n_embd=16, n_head=2, n_layer=1, warmup_steps=0, **kw)
    cfg.validate()
    return cls(*_spaces(), cfg)


def _pairs(n: int = 3, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"prompt": torch.randint(1, V, (n, P), generator=g),
                       "chosen": torch.randint(1, V, (n, T), generator=g),
                       "rejected": torch.randint(1, V, (n, T), generator=g)}, batch_size=[n])


def _perturb(model: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _seq_logprob_by_prefix(model: TinyGPT, prompt: torch.Tensor, cont: torch.Tensor) -> float:
    """log π(y | x) one prefix at a time: a separate code path from token_logprobs."""
    total = 0.0
    with torch.no_grad():
        for t in range(len(cont)):
            prefix = torch.cat([prompt, cont[:t]]).unsqueeze(0)
            logits = model(prefix)[0, -1].double()
            total += float(logits[cont[t]] - torch.logsumexp(logits, 0))
    return total


def test_dpo_loss_equals_closed_form_on_a_hand_built_pair() -> None:
    agent = _agent("dpo")
    _perturb(agent.policy)
    pair = _pairs(1)
    x, yw, yl = pair["prompt"][0], pair["chosen"][0], pair["rejected"][0]
    lw, ll = _seq_logprob_by_prefix(agent.policy, x, yw), _seq_logprob_by_prefix(agent.policy, x, yl)
    rw, rl = _seq_logprob_by_prefix(agent.reference, x, yw), _seq_logprob_by_prefix(agent.reference, x, yl)
    z = 0.1 * ((lw - rw) - (ll - rl))
    expected = -math.log(1.0 / (1.0 + math.exp(-z)))
    with torch.no_grad():
        got = preference_loss(agent.pair_stats(pair, with_grad=False), "dpo", 0.1, 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert abs(z) > 1e-3  # the pair is not trivially at the reference


def test_loss_formulas_from_numbers() -> None:
    s = PairStats(*(torch.tensor([v]) for v in (2.0, -1.0, 0.5, 3.0, 0.0, 0.0)))
    beta, alpha = 0.1, 0.5
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    assert preference_loss(s, "dpo", beta, alpha).item() == pytest.approx(-math.log(sig(0.3)), rel=1e-6)
    # (margin_w - margin_l) - (D_l - D_w) = 3 - 2.5 = 0.5;  alpha version: 3 - 1.25 = 1.75
    for loss in ("tdpo1", "radpo1"):
        assert preference_loss(s, loss, beta, alpha).item() == pytest.approx(-math.log(sig(0.05)), rel=1e-6)
    for loss in ("tdpo2", "radpo2"):
        assert preference_loss(s, loss, beta, alpha).item() == pytest.approx(-math.log(sig(0.175)), rel=1e-6)


def test_seq_kl_equals_direct_kl() -> None:
    g = torch.Generator().manual_seed(3)
    ref = torch.log_softmax(torch.randn(2, 3, 7, generator=g, dtype=torch.float64), -1)
    pol = torch.log_softmax(torch.randn(2, 3, 7, generator=g, dtype=torch.float64), -1)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    direct = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                p, q = ref[b, t].exp(), pol[b, t].exp()
                direct[b] += (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(seq_kl(ref, pol, mask), direct)
    assert bool((direct > 0).all())


def test_seq_risk_keeps_the_top_c_share_of_the_vocabulary() -> None:
    ref = torch.log(torch.tensor([[[0.4, 0.3, 0.1, 0.1, 0.1]]], dtype=torch.float64))
    pol = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.25, 0.15]]], dtype=torch.float64))
    delta = (ref - pol)[0, 0]
    terms = ref.exp()[0, 0] * delta
    # c = 1 keeps everything: the forward KL
    torch.testing.assert_close(seq_risk(ref, pol, 1.0), seq_kl(ref, pol))
    order = torch.argsort(delta)  # ascending: the lowest Δ first
    # c = 0.8: the 0.2-quantile of 5 values lies between the lowest two -> only the lowest term is dropped
    keep = torch.ones(5, dtype=torch.bool)
    keep[order[0]] = False
    torch.testing.assert_close(seq_risk(ref, pol, 0.8)[0], terms[keep].sum())
    # c = 0.6: the 0.4-quantile lies between the 2nd and 3rd lowest -> two terms dropped
    keep[order[1]] = False
    torch.testing.assert_close(seq_risk(ref, pol, 0.6)[0], terms[keep].sum())
    # dropping negative-Δ terms raises the sum: SeqRisk >= SeqKL
    assert seq_risk(ref, pol, 0.8).item() > seq_kl(ref, pol).item()


def test_vocab_quantile_matches_torch_quantile() -> None:
    x = torch.randn(3, 4, 567, generator=torch.Generator().manual_seed(0))
    for level in (0.0, 0.01, 0.03, 0.05, 0.5, 1.0):
        torch.testing.assert_close(vocab_quantile(x, level), torch.quantile(x, level, dim=-1, keepdim=True))


@pytest.mark.parametrize("loss", LOSSES)
def test_at_the_reference_everything_is_zero_and_loss_is_log2(loss: str) -> None:
    agent = _agent(loss)
    _perturb(agent.policy)
    agent.load_reference(agent.policy)  # policy == reference (a non-trivial model)
    stats = agent.pair_stats(_pairs(4), with_grad=False)
    for name in ("margin_w", "margin_l", "div_w", "div_l", "kl_w", "kl_l"):
        torch.testing.assert_close(getattr(stats, name), torch.zeros(4), atol=1e-5, rtol=0)
    losses = preference_loss(stats, loss, 0.1, 0.5)
    torch.testing.assert_close(losses, torch.full((4,), math.log(2.0)), atol=1e-6, rtol=0)


def test_tiny_gpt_is_causal_and_token_logprobs_match_logits() -> None:
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16))
    _perturb(model, 0.2)
    ids = torch.randint(0, V, (2, 8))
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % V
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    logp, dists = token_logprobs(model, ids, 3)
    assert logp.shape == (2, 5) and dists.shape == (2, 5, V)
    expect = torch.log_softmax(a, -1)[:, 2:7].gather(-1, ids[:, 3:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, expect)
    out = generate(model, ids[:, :3], 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4) and int(out.max()) < V
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("loss", ["dpo", "tdpo2", "radpo1"])
def test_gradient_matches_finite_differences(loss: str) -> None:
    agent = _agent(loss, confidence=0.9)
    agent.double()
    _perturb(agent.policy, 0.3)
    pair = _pairs(2, seed=5)
    params = list(agent.policy.parameters())
    stats = agent.pair_stats(pair)
    preference_loss(stats, loss, 0.1, 0.5).mean().backward()
    frozen_w = stats.div_w.detach()  # the "2" variants: the chosen divergence is a constant to the gradient
    g = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction, strict=True))

    def value(eps: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(eps * d)
            s = agent.pair_stats(pair, with_grad=False)
            if loss.endswith("2"):
                s.div_w = frozen_w
            out = float(preference_loss(s, loss, 0.1, 0.5).mean())
            for p, d in zip(params, direction, strict=True):
                p.sub_(eps * d)
        return out

    eps = 1e-6
    numeric = (value(eps) - value(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    assert abs(analytic) > 1e-6


@pytest.fixture(scope="module")
def small_env() -> SentimentPreferenceEnv:
    return SentimentPreferenceEnv(n_train=24, n_test=8, sft_steps=20, n_candidates=3)


def test_env_passes_check_env_and_rewards_vader(small_env: SentimentPreferenceEnv) -> None:
    check_env(small_env, skip_render_check=True)
    assert 500 <= small_env.vocab_size <= 650
    assert len(small_env.positive_ids) == len(small_env.negative_ids) == 150
    obs, _ = small_env.reset(seed=3)
    assert (obs[:small_env.prompt_len] > 0).all() and (obs[small_env.prompt_len:] == 0).all()
    rng = np.random.default_rng(0)
    done, rewards = False, []
    while not done:
        obs, r, done, trunc, info = small_env.step(int(rng.choice(sorted(small_env.positive_ids))))
        rewards.append(r)
    text = small_env.decode(obs[small_env.prompt_len:])
    assert rewards[:-1] == [0.0] * (small_env.response_len - 1)
    assert rewards[-1] == pytest.approx(vader_compound(text)) and rewards[-1] > 0.5
    assert info["text"] == text
    torch.testing.assert_close(small_env.score(obs[None, small_env.prompt_len:]), torch.tensor([vader_compound(text)]))


def test_pairs_are_deterministic_and_ordered(small_env: SentimentPreferenceEnv) -> None:
    tr = small_env.preference_pairs("train")
    assert tr.batch_size == torch.Size([24]) and tr["chosen"].shape == (24, small_env.response_len)
    assert bool((tr["chosen_score"] > tr["rejected_score"]).all())
    got = small_env.score(tr["chosen"][:4])
    torch.testing.assert_close(got, tr["chosen_score"][:4])
    sp._pairs.cache_clear()  # rebuild the reference and the pairs from scratch
    sp._reference_state.cache_clear()
    again = SentimentPreferenceEnv(n_train=24, n_test=8, sft_steps=20, n_candidates=3).preference_pairs("train")
    assert torch.equal(again["chosen"], tr["chosen"]) and torch.equal(again["prompt"], tr["prompt"])


@pytest.mark.parametrize("cls", [DPO, TDPO, RaDPO])
def test_agent_updates_run(small_env: SentimentPreferenceEnv, cls: type) -> None:
    cfg = cls.Config(warmup_steps=2)
    cfg.validate()
    agent = cls(small_env.observation_space, small_env.action_space, cfg)
    agent.load_reference(small_env.reference_model())
    pairs = small_env.preference_pairs("train")
    before = agent.evaluate_pairs(small_env.preference_pairs("test"))
    assert before["seqkl_w"] == pytest.approx(0.0, abs=1e-5)
    for i in range(3):
        metrics = agent.update(pairs[i * 8:(i + 1) * 8])
    assert set(metrics) == set(cls.metric_names)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    after = agent.evaluate_pairs(small_env.preference_pairs("test"))
    assert after["seqkl_w"] > 0  # the policy moved away from the reference
    obs, _ = small_env.reset(seed=0)
    a = agent.act(torch.as_tensor(obs)[None])
    assert a.shape == (1,) and 0 <= int(a) < small_env.vocab_size
    state = agent.checkpoint_state()
    other = cls(small_env.observation_space, small_env.action_space, cfg)
    other.load_checkpoint_state(state)
    assert other.num_updates == 3


def test_bad_config_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match="agent.confidence"):
        RaDPOConfig(confidence=1.5).validate()
    with pytest.raises(ConfigError, match="agent.beta"):
        PreferenceConfig(beta=0.0).validate()
    with pytest.raises(ConfigError, match="agent.loss"):
        RaDPOConfig(loss="dpo").validate()
    with pytest.raises(ConfigError, match="agent.loss"):
        DPO(*_spaces(), PreferenceConfig(loss="radpo1"))
    cfg = resolve_config("radpo", "rl_energy/SentimentPreference-v0", RaDPOConfig,
                         overrides=["agent.confidence=0.97"])
    assert cfg.agent.loss == "radpo2" and cfg.agent.confidence == 0.97
    with pytest.raises(ConfigError, match="agent.warmup_steps"):
        resolve_config("tdpo", "rl_energy/SentimentPreference-v0", TDPO.Config, overrides=["agent.warmup_steps=-1"])


def test_the_pairs_loop_trains_evaluates_and_resumes_from_its_checkpoint(tmp_path) -> None:
    """``rl-energy train --agent radpo --env rl_energy/SentimentPreference-v0``: the ``pairs`` loop logs the held-out
    figures, and a resumed run continues the same pair counter with the same policy."""
    import csv

    from rl_energy.trainer import EvalOptions, evaluate_run, make_trainer

    ov = ["env_kwargs.n_train=32", "env_kwargs.n_test=8", "env_kwargs.sft_steps=10", "env_kwargs.n_candidates=2",
          "train.batch_size=8", "train.eval_every=16", "train.log_every=16", "train.checkpoint_every=16",
          "train.total_steps=32"]
    cfg = resolve_config("radpo", "rl_energy/SentimentPreference-v0", RaDPOConfig, overrides=ov)
    trainer = make_trainer(cfg, tmp_path / "run", verbose=False)
    trainer.train()
    policy = {k: v.clone() for k, v in trainer.agent.policy.state_dict().items()}
    cfg2 = resolve_config("radpo", "rl_energy/SentimentPreference-v0", RaDPOConfig,
                          overrides=[*ov[:-1], "train.total_steps=48"])
    resumed = make_trainer(cfg2, tmp_path / "run", resume=True, verbose=False)
    assert resumed.step == 32
    for k, v in resumed.agent.policy.state_dict().items():
        torch.testing.assert_close(v, policy[k], rtol=0, atol=0)
    resumed.train()
    with open(tmp_path / "run" / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [16, 32, 48]
    assert all(0.0 <= float(r["eval_reward_acc"]) <= 1.0 and float(r["eval_seqkl_w"]) >= 0 for r in rows)
    assert evaluate_run(tmp_path / "run", EvalOptions()).startswith("pair 48: test ")
