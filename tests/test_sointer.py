"""SOInter (digest §1): the Gumbel-top-k sampler and its exact set probability, the structured-output black
box of StructuredInterpretation-v0, and the three interpreter arms (sointer, l2x, mask_reinforce) under the
``contexts`` loop."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tensordict import TensorDict

from rl_energy.agents.sointer import SOInter, SOInterConfig, gumbel_top_k, subset_log_prob
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.structured_interpretation import StructuredInterpretationTask
from rl_energy.errors import ConfigError
from rl_energy.registry import get_agent
from rl_energy.trainer import make_trainer

ENV = "rl_energy/StructuredInterpretation-v0"
SMALL = {"n_train": 256, "n_test": 128}


# ------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("k", [1, 3, 7, 10])
def test_gumbel_top_k_masks_have_exactly_k_ones(k):
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(500, 10, generator=gen) * 3
    for noise in (True, False):
        out = gumbel_top_k(logits, k, tau=0.7, generator=gen, noise=noise)
        assert set(out.hard.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out.hard.sum(1), torch.full((500,), float(k)))
        assert torch.allclose(out.soft.sum(1), torch.full((500,), float(k)), atol=1e-4)
        assert torch.equal(out.hard.gather(1, out.order), torch.ones(500, k))  # the order lists the picks
    mode = gumbel_top_k(logits, k, noise=False).hard  # the deterministic action is the top-k of the scores
    assert torch.equal(mode, torch.zeros_like(logits).scatter_(1, logits.topk(k, 1).indices, 1.0))


def test_gumbel_top_k_first_pick_follows_the_softmax_policy():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    tau, n = 0.8, 40_000
    out = gumbel_top_k(logits.expand(n, -1), 2, tau=tau, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.order[:, 0], minlength=5).double() / n
    expect = torch.softmax(logits.double() / tau, 0)
    assert torch.allclose(freq, expect, atol=4 * math.sqrt(0.25 / n))


def test_subset_log_prob_is_the_exact_gumbel_top_k_set_law():
    d, k, n = 6, 3, 60_000
    logits = torch.tensor([[1.5, 0.3, -0.7, 0.9, 0.0, -1.2]])
    sets = [torch.zeros(d).index_fill_(0, torch.tensor(c), 1.0) for c in itertools.combinations(range(d), k)]
    masks = torch.stack(sets)
    p = subset_log_prob(logits.expand(len(sets), -1), masks, tau=1.3).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)  # a distribution over all C(6, 3) sets
    draws = gumbel_top_k(logits.expand(n, -1), k, tau=1.3, generator=torch.Generator().manual_seed(1)).hard
    codes = (draws * 2 ** torch.arange(d)).sum(1).long()
    set_codes = (masks * 2 ** torch.arange(d)).sum(1).long()
    freq = torch.tensor([(codes == c).double().mean() for c in set_codes])
    assert torch.allclose(freq, p.double(), atol=4 * math.sqrt(0.25 / n))
    # Plackett-Luce, not exp(s·m): the two laws differ off the mode
    gibbs = torch.softmax((masks @ logits[0]) / 1.3, 0)
    assert not torch.allclose(p.double(), gibbs.double(), atol=1e-2)


# ------------------------------------------------------------------------------------- the task
def _brute_force_map(task: StructuredInterpretationTask, x: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x:
        theta = [float((row[task.blocks[j]] * task.w[j]).sum()) for j in range(task.n_outputs)]
        best, best_y = -math.inf, None
        for y in itertools.product([-1.0, 1.0], repeat=task.n_outputs):
            s = sum(t * v for t, v in zip(theta, y, strict=True))
            s += task.coupling * sum(float(task.J[a, b]) * y[a] * y[b] for a, b in task.edges)
            if s > best:
                best, best_y = s, y
        out.append(best_y)
    return torch.tensor(out)


def test_black_box_is_the_exact_map_and_the_relevant_set_is_right():
    task = StructuredInterpretationTask(n_features=8, n_outputs=3, features_per_output=2, n_coupled=1,
                                        coupling=1.5, target=1, n_train=8, n_test=8)
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.equal(task.black_box(x), _brute_force_map(task, x))
    assert task.coupled == [2] and task.k == 4
    assert task.relevant().tolist() == [0, 0, 1, 1, 1, 1, 0, 0]  # S_1 ∪ S_2
    # the observation puts the target first, then t+1, …
    obs = task.contexts("test")["obs"]
    assert torch.equal(obs[:, 8:], task.black_box(obs[:, :8])[:, [1, 2, 0]])
    # uncoupled: the target is sign(θ_t) and only S_t is relevant
    free = StructuredInterpretationTask(n_features=8, n_outputs=3, features_per_output=2, n_coupled=1,
                                        coupling=0.0, target=1, n_train=8, n_test=8)
    assert free.relevant().tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert torch.equal(free.black_box(x)[:, 1], torch.sign(free.unary(x)[:, 1]))
    # with a strong coupling the coupled output's features move the target (that is why they are relevant)
    strong = StructuredInterpretationTask(n_features=8, n_outputs=3, features_per_output=2, n_coupled=1,
                                          coupling=5.0, target=1, n_train=8, n_test=8)
    keep_target_only = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0.0]).expand(300, -1)
    changed = strong.black_box(x)[:, 1] != strong.black_box(strong.masked(x, keep_target_only))[:, 1]
    assert changed.float().mean() > 0.1
    unchanged = free.black_box(x)[:, 1] == free.black_box(free.masked(x, keep_target_only))[:, 1]
    assert bool(unchanged.all())


def test_task_passes_check_env_and_scores_the_selected_subset():
    env = gym.make(ENV, **SMALL)
    task = env.unwrapped
    check_env(task, skip_render_check=True)
    batch = task.contexts("test")
    rel = task.relevant().expand(len(batch), -1)
    assert torch.equal(task.score(batch, rel), torch.ones(len(batch)))  # the relevant set is faithful
    assert task.true_positive_rate(rel).mean().item() == 1.0
    assert task.select(rel * 0.7 + 0.1).equal(rel)  # graded actions: the task keeps their top k
    # score reads only obs and action
    obs_only = batch.select("obs")
    action = torch.rand(len(batch), task.d)
    assert torch.equal(task.score(obs_only, action), task.score(batch, action))
    assert set(task.metrics(batch, action)) == set(task.metric_names)
    # one step's reward equals the batched score
    obs, _ = task.reset(seed=3)
    a = task.action_space.sample()
    _, reward, terminated, _, _ = task.step(a)
    one = batch[:1].clone()
    one["obs"][0] = torch.as_tensor(obs)
    assert terminated and task.score(one, torch.as_tensor(a)[None]).item() == reward


@pytest.mark.parametrize(("kwarg", "value"), [("coupling", -1.0), ("coupling", True), ("n_outputs", 11),
                                              ("target", 5), ("k", 0), ("k", 21), ("features_per_output", 5),
                                              ("n_coupled", 5), ("mask_value", float("nan")), ("n_train", 2.5)])
def test_bad_task_kwargs_name_the_kwarg(kwarg, value):
    with pytest.raises(ConfigError, match=f"'{kwarg}'"):
        StructuredInterpretationTask(**{kwarg: value})


# ------------------------------------------------------------------------------------- the agents
def _cfg(agent: str, *overrides: str, total: int = 1_000):
    ov = [f"env_kwargs.{k}={v}" for k, v in SMALL.items()]
    ov += [f"train.total_steps={total}", f"train.eval_every={total}", f"train.log_every={total}",
           "train.batch_size=50", "train.checkpoint_every=0", "train.compile=false", *overrides]
    return resolve_config(agent, ENV, get_agent(agent).config_cls, overrides=ov)


@pytest.mark.parametrize("agent", ["sointer", "l2x", "mask_reinforce"])
def test_agents_train_and_act_with_k_hot_masks_through_the_contexts_loop(tmp_path, agent):
    extra = ("agent.pretrain_updates=10",) if agent != "mask_reinforce" else ()
    trainer = make_trainer(_cfg(agent, *extra), tmp_path / agent, verbose=False)
    result = trainer.train()
    assert trainer.agent.num_updates == 20
    assert 0.0 <= result["tpr"] <= 1.0 and 0.0 <= result["post_hoc_accuracy"] <= 1.0
    obs = trainer.task.contexts("test")["obs"]
    for deterministic in (True, False):
        mask = trainer.agent.act(obs, deterministic=deterministic)
        assert torch.equal(mask.sum(1), torch.full((len(obs),), 9.0))


def test_bad_agent_config_names_the_key():
    with pytest.raises(ConfigError, match="agent.relax_tau"):
        _cfg("sointer", "agent.relax_tau=0")
    with pytest.raises(ConfigError, match="agent.baseline"):
        _cfg("mask_reinforce", "agent.baseline=median")
    task = StructuredInterpretationTask(**SMALL)
    agent = SOInter(task.observation_space, task.action_space, SOInterConfig(k=4))
    with pytest.raises(ConfigError, match="agent.k"):
        agent.observe_train_split(task.contexts("train"))


def test_a_short_reinforce_run_beats_random_masks(tmp_path):
    """REINFORCE on fidelity, 300 updates: well above the random masks' TPR k/d = 0.45."""
    cfg = _cfg("mask_reinforce", "env_kwargs.n_train=2000", "train.batch_size=100", "agent.lr=3e-3", total=30_000)
    result = make_trainer(cfg, tmp_path / "r", verbose=False).train()
    assert result["tpr"] > 0.7


@pytest.mark.parametrize("fit_relaxed", [True, False])
def test_model_fine_tunes_on_the_relaxed_masked_inputs_only_when_asked(fit_relaxed):
    """``fit_relaxed``: the model's fine-tuning step also fits the black box's outputs on ``x`` at ``x ⊙ m̃``, the
    relaxed-masked inputs the interpreter is trained through."""
    task = StructuredInterpretationTask(**SMALL)
    agent = SOInter(task.observation_space, task.action_space,
                    SOInterConfig(pretrain_updates=0, fit_relaxed=fit_relaxed))
    data = task.contexts("train")[:64]
    agent.observe_train_split(data)
    seen = []
    fit = agent.fit_loss
    agent.fit_loss = lambda x, y: (seen.append((x.detach().clone(), y.clone())), fit(x, y))[1]
    obs = data["obs"]
    action = agent.act(obs)
    batch = TensorDict({"obs": obs, "action": action, "reward": task.score(data, action)}, batch_size=[64])
    agent.update(batch)
    x, y = obs[:, :task.d], obs[:, task.d:]
    assert torch.equal(seen[0][0], x) and torch.equal(seen[0][1], y)  # the unmasked pairs, always
    assert len(seen) == (2 if fit_relaxed else 1)
    if fit_relaxed:
        x_rel, y_rel = seen[1]
        assert torch.equal(y_rel, y)  # labelled with sb(x), L2X's variational bound
        ratio = x_rel / x
        assert bool((ratio > -1e-6).all())
        assert ((ratio > 0.01) & (ratio < 0.99)).float().mean() > 0.3  # a relaxed mask, not a k-hot one
        assert torch.allclose(ratio.sum(1), torch.full((64,), 9.0), atol=1e-3)
