"""``rl_energy/SentimentPreference-v0``: sentiment-steered text generation as a token-level MDP, with the
offline preference pairs of the risk-aware DPO experiments (Zhang et al. 2025, "Risk-aware direct preference
optimization under nested risk measure", arXiv 2505.20359; digest ``papers/one-step-tasks.md`` §13).

**The MDP** (the paper's token-level framing, §3): the state ``s_t = [x, y_<t]`` is a prompt of ``P`` tokens
plus the continuation so far, observed as the ``P + T`` token ids padded with :data:`PAD` (id 0) after the
prefix (``Box`` of int64); the action is the next token (``Discrete(V)``); after ``T`` tokens the episode ends
with the reward ``VADER compound(decode(y))`` in ``[-1, 1]`` (0 on every earlier step). Prompts are drawn from
the review grammar below.

**The vocabulary** (~560 words, :func:`build_vocab`): 3 specials (``<pad>``, ``<bos>``, ``.``), 150 positive and
150 negative words of VADER's bundled lexicon (``vaderSentiment``'s ``vader_lexicon.txt``: common review
words whose lexicon valence has the right sign; the lexicon's own strongest words are mostly slang and
slurs, so the words are a curated list checked against the lexicon), and neutral fillers (none of them in
the lexicon).

**The data** (digest §13, "CPU experiment"): a synthetic review grammar (:meth:`SentimentPreferenceEnv.sample_reviews`:
sentences from templates with noun, verb, filler and sentiment slots, each review with its own share of
positive sentences, so texts range from glowing to scathing); a reference model, a :class:`~rl_energy.lm.TinyGPT`
(2 layers, 64-dim embeddings) fitted to ``<bos>`` + the first ``P + T - 1`` tokens of grammar reviews by
maximum likelihood (:meth:`SentimentPreferenceEnv.reference_model`, about a minute on one core); and the
preference pairs (:meth:`SentimentPreferenceEnv.preference_pairs`): for each prompt (``<bos>`` + the first
``P - 1`` tokens of a fresh review), ``n_candidates`` continuations of ``T`` tokens sampled from the reference,
scored by VADER, the best chosen and the worst rejected (ties dropped and redrawn). 4,000 train and 500 test
pairs by default. Everything is deterministic given ``data_seed`` and cached in the process (the pairs need
the reference model: about 2 minutes in all on one core).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import is_int, is_number
from rl_energy.errors import ConfigError, import_optional
from rl_energy.lm import GPTConfig, TinyGPT, generate, next_token_logprobs

PAD, BOS, STOP = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", ".")

_POSITIVE = """good great excellent amazing wonderful fantastic brilliant superb beautiful lovely delightful charming
enjoyable fun funny hilarious clever smart warm sweet pleasant nice fine perfect outstanding awesome impressive
inspiring inspired heartwarming exciting thrilling entertaining engaging fresh creative elegant graceful stunning
gorgeous magnificent marvelous splendid terrific superior best better love loved loving like liked enjoy enjoyed
adore admire appreciate recommend recommended praise applaud celebrate win winner won success successful triumph
hero heroic brave honest sincere kind gentle calm peaceful relaxing comfortable happy happily glad joy joyful
cheerful cheer laugh laughing smile smiling excited thrilled pleased satisfied grateful thankful proud confident
hope hopeful optimistic positive strong powerful rich solid worthy valuable useful helpful fair free safe secure
trust trusted true wise intelligent talented masterpiece favorite friendly generous glorious harmony humor
humorous ideal innocent interesting keen lively luck lucky merry nicely okay playful popular pretty respect
romantic rewarding special spirited stable supportive sweetheart thoughtful treasure vibrant welcome wow adventure
beauty bliss bright charm comfort courage dear dream easy eager energetic enthusiastic excellence faith
fascinating fond freedom glamorous grand gratitude heaven honor""".split()
_NEGATIVE = """bad awful terrible horrible poor worst worse boring dull weak lame stupid dumb useless worthless annoying
irritating frustrating disappointing disappointed disappointment mess messy ugly gross disgusting nasty painful
pain hurt hurting sad sadly depressing depressed gloomy miserable misery tragic tragedy dreadful dread fear scared
scary horror hate hated hating dislike disliked angry anger mad furious rage upset unhappy lonely lost loss fail
failed failure flop broken damage damaged wrong error mistake problem problems trouble troubled confused confusing
chaos crap fake fraud lies liar cheat cruel evil wicked guilty shame ashamed embarrassing awkward tired pathetic
ridiculous offensive rude harsh hostile violent violence brutal kill killed death dead die disaster catastrophe
crisis danger dangerous risk threat attack fight war bitter sick ill poison rotten dirty stink stinks waste wasted
regret sorry sorrow grief cry crying tears weep worry worried nervous anxious stress stressed panic doubt hopeless
helpless pessimistic negative unfair unfortunate reject rejected refuse ignore ignored neglect abandon abandoned
alone bored boredom fiasco flawed failing lousy inferior obnoxious horrid grim grave dismal sucks hell""".split()
NOUNS = """movie film plot story acting cast actor actress director script ending scene scenes music soundtrack camera
dialogue character characters lead hero villain sequel series show episode season book novel chapter author writer
score sound picture screen theater cinema studio budget effects costume costumes set sets lighting editing pacing
tone mood theme idea premise twist finale opening start middle end performance performances role roles voice
makeup design style genre comedy drama thriller western romance documentary animation cartoon version remake
release trailer poster ticket seat audience crowd critic review reviewer time hour minute night weekend friend
family kid kids parent wife husband brother sister city town house car train ship island forest road""".split()
VERBS = """watched saw found thought felt made wrote told showed played sang called said started finished
returned followed opened closed turned walked talked watched read heard seemed looked became kept left brought
took gave sent met tried""".split()
ADJECTIVES = """long short new old first second third final main whole young older early late big small large little
american french british local recent modern silent black white red blue green dark quiet loud simple plain
average usual typical standard normal regular""".split()
FUNCTION = """the a an this that these those it its i we you he she they my our your his her their and but or so
then also just still even very really quite rather almost mostly too was were is are be been had has have did do
does of in on at to for with about from by as than after before during not what overall""".split()
ADVERBS = """today yesterday tonight again twice once later soon often sometimes always never usually finally maybe
perhaps probably somehow anyway""".split()

P_DEFAULT, T_DEFAULT = 4, 16


@cache
def build_vocab(n_sentiment: int = 150) -> tuple[tuple[str, ...], frozenset[int], frozenset[int]]:
    """The vocabulary (specials, positive, negative, fillers) and the ids of the positive and negative words.

    The sentiment words are those of the curated lists whose valence in VADER's bundled lexicon has the
    right sign, the first ``n_sentiment`` of each in alphabetical order; fillers in the lexicon are dropped.
    """
    vader = import_optional("vaderSentiment.vaderSentiment", "rl_energy/SentimentPreference-v0")
    lexicon = vader.SentimentIntensityAnalyzer().lexicon
    pos = sorted({w for w in _POSITIVE if lexicon.get(w, 0.0) > 0})[:n_sentiment]
    neg = sorted({w for w in _NEGATIVE if lexicon.get(w, 0.0) < 0})[:n_sentiment]
    if len(pos) < n_sentiment or len(neg) < n_sentiment:
        raise ConfigError(f"env_kwargs.n_sentiment={n_sentiment} exceeds the word lists ({len(pos)} positive, "
                          f"{len(neg)} negative)")
    fillers: list[str] = []
    seen = set(SPECIALS) | set(pos) | set(neg)
    for w in NOUNS + VERBS + ADJECTIVES + FUNCTION + ADVERBS:
        if w not in seen and w not in lexicon:
            fillers.append(w)
            seen.add(w)
    words = (*SPECIALS, *pos, *neg, *fillers)
    index = {w: i for i, w in enumerate(words)}
    return words, frozenset(index[w] for w in pos), frozenset(index[w] for w in neg)


@cache
def _analyzer() -> Any:
    return import_optional("vaderSentiment.vaderSentiment", "rl_energy/SentimentPreference-v0") \
        .SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER's compound score of ``text`` in ``[-1, 1]``."""
    return float(_analyzer().polarity_scores(text)["compound"])


# Sentence templates: N noun, V verb, A neutral adjective, D adverb, S sentiment word of the sentence's
# polarity, X sentiment word of the opposite polarity (mixed sentences); anything else is a literal word.
TEMPLATES: tuple[tuple[str, ...], ...] = tuple(t.split() for t in (
    "the N was S .", "the N was very S .", "the N was really S .", "i thought the N was S .",
    "this N is S and S .", "a S N with a S N .", "the N and the N were S .", "i found it S .",
    "overall a S N .", "the N was A and S .", "we V it D and it was S .", "my brother said the N was S .",
    "the N felt X but the N was S .", "it was not X .", "the N is just S .", "i V the N and it was quite S .",
    "the A N was S but the N was S .", "what a S N .", "they V the N D .", "the N V the N .",
))


class SentimentPreferenceEnv(gym.Env):
    """Token-level sentiment MDP with offline preference data (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, prompt_len: int = P_DEFAULT, response_len: int = T_DEFAULT, n_train: int = 4000,
                 n_test: int = 500, n_candidates: int = 4, data_seed: int = 0, sft_steps: int = 1500,
                 sft_batch: int = 64, sft_lr: float = 3e-3, n_layer: int = 2, n_head: int = 2, n_embd: int = 64,
                 n_sentiment: int = 150) -> None:
        minimum = {"prompt_len": 2, "response_len": 1, "n_train": 1, "n_test": 1, "n_candidates": 2, "sft_steps": 0,
                   "sft_batch": 1, "n_layer": 1, "n_head": 1, "n_embd": 1, "n_sentiment": 1}
        given = {"prompt_len": prompt_len, "response_len": response_len, "n_train": n_train, "n_test": n_test,
                 "n_candidates": n_candidates, "sft_steps": sft_steps, "sft_batch": sft_batch, "n_layer": n_layer,
                 "n_head": n_head, "n_embd": n_embd, "n_sentiment": n_sentiment}
        for key, low in minimum.items():
            if not (is_int(given[key]) and given[key] >= low):
                raise ConfigError(f"env_kwargs.{key} must be an integer >= {low}, got {given[key]!r}")
        if not is_int(data_seed):
            raise ConfigError(f"env_kwargs.data_seed must be an integer, got {data_seed!r}")
        if not (is_number(sft_lr) and sft_lr > 0):
            raise ConfigError(f"env_kwargs.sft_lr must be a positive number, got {sft_lr!r}")
        if n_embd % n_head:
            raise ConfigError(f"env_kwargs.n_embd ({n_embd}) must be a multiple of env_kwargs.n_head ({n_head})")
        self.prompt_len, self.response_len = prompt_len, response_len
        self.n_train, self.n_test, self.n_candidates = n_train, n_test, n_candidates
        self.data_seed = data_seed
        self.sft_steps, self.sft_batch, self.sft_lr = sft_steps, sft_batch, sft_lr
        self.words, self.positive_ids, self.negative_ids = build_vocab(n_sentiment)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)
        self.seq_len = prompt_len + response_len
        self.gpt_config = GPTConfig(vocab_size=self.vocab_size, block_size=self.seq_len, n_layer=n_layer,
                                    n_head=n_head, n_embd=n_embd)
        self.observation_space = gym.spaces.Box(0, self.vocab_size - 1, shape=(self.seq_len,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(self.vocab_size)
        self._pos = sorted(self.positive_ids)
        self._neg = sorted(self.negative_ids)
        self._slots = {"N": self._ids(NOUNS), "V": self._ids(VERBS), "A": self._ids(ADJECTIVES),
                       "D": self._ids(ADVERBS)}
        self._state: np.ndarray | None = None
        self._t = 0

    def _ids(self, words: list[str]) -> list[int]:
        return sorted({self.index[w] for w in words if w in self.index})

    # ------------------------------------------------------------------------------ text
    def decode(self, ids: Any) -> str:
        """Words of token ids, space-separated (``<pad>`` and ``<bos>`` left out)."""
        return " ".join(self.words[int(i)] for i in np.asarray(ids).reshape(-1) if int(i) not in (PAD, BOS))

    def score(self, continuations: torch.Tensor | np.ndarray) -> torch.Tensor:
        """VADER compound of each decoded continuation ``[n, T]`` -> ``[n]`` (the MDP's terminal reward)."""
        arr = np.asarray(continuations)
        return torch.tensor([vader_compound(self.decode(row)) for row in arr.reshape(len(arr), -1)])

    def sample_reviews(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` grammar reviews ``[n, length]``: ``<bos>`` then sentences until ``length`` tokens."""
        out = np.empty((n, length), dtype=np.int64)
        n_templates = len(TEMPLATES)
        for i in range(n):
            p_pos = rng.beta(0.7, 0.7)  # the review's share of positive sentences: mostly one-sided
            row = [BOS]
            while len(row) < length:
                template = TEMPLATES[rng.integers(n_templates)]
                positive = rng.random() < p_pos
                for slot in template:
                    if slot in ("S", "X"):
                        pool = self._pos if positive == (slot == "S") else self._neg
                        row.append(pool[rng.integers(len(pool))])
                    elif slot in self._slots:
                        pool = self._slots[slot]
                        row.append(pool[rng.integers(len(pool))])
                    else:
                        row.append(self.index[slot])
            out[i] = row[:length]
        return out

    def prompts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` prompts ``[n, P]``: ``<bos>`` and the first ``P - 1`` tokens of fresh grammar reviews."""
        return self.sample_reviews(n, self.prompt_len, rng)

    # ------------------------------------------------------------------------------ offline data
    def reference_model(self) -> TinyGPT:
        """The SFT reference model (a fresh copy; trained once per process and configuration)."""
        return _reference(self._data_key())

    def preference_pairs(self, split: str) -> TensorDict:
        """The ``split`` (``train``/``test``) preference pairs: ``prompt`` ``[N, P]``, ``chosen`` and ``rejected``
        ``[N, T]`` (int64), their masks (bool, all true: continuations have exactly ``T`` tokens) and VADER
        scores ``chosen_score``/``rejected_score``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return _pairs(self._data_key())[split].clone()

    def _data_key(self) -> tuple:
        return (self.prompt_len, self.response_len, self.n_train, self.n_test, self.n_candidates, self.data_seed,
                self.sft_steps, self.sft_batch, self.sft_lr, self.gpt_config.n_layer, self.gpt_config.n_head,
                self.gpt_config.n_embd, len(self._pos))

    # ------------------------------------------------------------------------------ gymnasium side
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._state = np.full(self.seq_len, PAD, dtype=np.int64)
        self._state[:self.prompt_len] = self.prompts(1, self.np_random)[0]
        self._t = 0
        return self._state.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.response_len:
            raise RuntimeError("the episode has ended; call reset()")
        a = int(action)
        if not 0 <= a < self.vocab_size:
            raise ValueError(f"action must be a token id in [0, {self.vocab_size}), got {action!r}")
        self._state[self.prompt_len + self._t] = a
        self._t += 1
        done = self._t == self.response_len
        info: dict[str, Any] = {}
        reward = 0.0
        if done:
            reward = vader_compound(self.decode(self._state[self.prompt_len:]))
            info["text"] = self.decode(self._state[self.prompt_len:])
        return self._state.copy(), reward, done, False, info


def _env_from_key(key: tuple) -> SentimentPreferenceEnv:
    p, t, n_train, n_test, k, seed, steps, batch, lr, n_layer, n_head, n_embd, n_sent = key
    return SentimentPreferenceEnv(prompt_len=p, response_len=t, n_train=n_train, n_test=n_test, n_candidates=k,
                                  data_seed=seed, sft_steps=steps, sft_batch=batch, sft_lr=lr, n_layer=n_layer,
                                  n_head=n_head, n_embd=n_embd, n_sentiment=n_sent)


def pretrain_reference(env: SentimentPreferenceEnv, steps: int, batch: int, lr: float, seed: int) -> TinyGPT:
    """SFT of the reference model: maximum likelihood on ``<bos>`` + grammar reviews of ``P + T`` tokens
    (AdamW, 10% linear warm-up, cosine decay; fresh reviews every batch). Deterministic given ``seed``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    model = TinyGPT(env.gpt_config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    model.train()
    for step in range(steps):
        decay = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        scale = (step + 1) / warm if step < warm else decay
        for group in opt.param_groups:
            group["lr"] = lr * scale
        ids = torch.from_numpy(env.sample_reviews(batch, env.seq_len, rng))
        logp = next_token_logprobs(model, ids[:, :-1])
        loss = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model


@cache
def _reference_state(key: tuple) -> dict[str, torch.Tensor]:
    env = _env_from_key(key)
    model = pretrain_reference(env, env.sft_steps, env.sft_batch, env.sft_lr, env.data_seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reference(key: tuple) -> TinyGPT:
    env = _env_from_key(key)
    model = TinyGPT(env.gpt_config)
    model.load_state_dict(_reference_state(key))
    model.eval()
    return model


@cache
def _pairs(key: tuple) -> dict[str, TensorDict]:
    """Best/worst of ``n_candidates`` reference continuations per prompt, scored by VADER (ties redrawn)."""
    env = _env_from_key(key)
    model = _reference(key)
    out = {}
    for split, n, salt in (("train", env.n_train, 2), ("test", env.n_test, 3)):
        rng = np.random.default_rng([env.data_seed, salt])
        gen = torch.Generator().manual_seed(env.data_seed * 1000 + salt)
        keep: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []
        while len(keep) < n:
            m = int((n - len(keep)) * 1.2) + 8
            prompts = env.prompts(m, rng)
            prompt_t = torch.from_numpy(prompts).repeat_interleave(env.n_candidates, 0)
            cont = generate(model, prompt_t, env.response_len, generator=gen).numpy()
            scores = env.score(cont).numpy().reshape(m, env.n_candidates)
            cont = cont.reshape(m, env.n_candidates, env.response_len)
            for i in range(m):
                best, worst = int(scores[i].argmax()), int(scores[i].argmin())
                if scores[i, best] > scores[i, worst] and len(keep) < n:
                    keep.append((prompts[i], cont[i, best], cont[i, worst], scores[i, best], scores[i, worst]))
        prompt, chosen, rejected, sw, sl = (np.stack([k[j] for k in keep]) for j in range(5))
        out[split] = TensorDict({
            "prompt": torch.from_numpy(prompt), "chosen": torch.from_numpy(chosen),
            "rejected": torch.from_numpy(rejected),
            "chosen_mask": torch.ones(n, env.response_len, dtype=torch.bool),
            "rejected_mask": torch.ones(n, env.response_len, dtype=torch.bool),
            "chosen_score": torch.from_numpy(sw).float(), "rejected_score": torch.from_numpy(sl).float(),
        }, batch_size=[n])
    return out
