"""Reproduce the EK-FAC influence-function findings of Grosse et al. 2023 (arXiv 2308.03296; digest §6) on CPU.

* Part B, **IHVP accuracy vs cost**: ``load_diabetes`` (bundled with scikit-learn), an MLP 10-64-64-1 on the squared
  error. Ground truth: the linear datamodeling score (LDS): retrain from the same initialisation on ``M`` random
  halves of the training set (full-batch Adam, all subsets at once with ``torch.func.vmap``), and correlate (Spearman,
  over subsets) each query's measured ``−loss`` with the sum of the predicted influences of the kept samples. Arms:
  identity, K-FAC, EK-FAC, exact damped Gauss–Newton/Fisher inverse, LiSSA, and ``kronfluence``'s EK-FAC on the same
  model, data, query and damping heuristic; query batching at rank r ∈ {4, 16, 32}. The paper's claim: EK-FAC is about
  as accurate as the iterative estimators at a fraction of their cost.
* Part A, **order flip**: templated facts ("the capital of X is Y" and 4 paraphrases, always X before Y) for
  synthetic countries/cities plus distractor facts, a tiny LM made only of ``nn.Linear`` layers (one-hot tokens,
  a Linear embedding, a fixed window, :func:`rl_energy.nets.mlp`). Queries in the same order ("the capital of X is"
  → Y) and flipped ("Y is the capital of" → X). Metric: the share of the top-``k`` positive influence that lies on
  the fact's own training sequences, and the best rank of one of them. The paper: high for the same order, near zero
  when flipped.

Usage: ``python scripts/reproduce_influence.py [--part A|B|all] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from rl_energy.analysis.influence import (
    Influence,
    kronfluence_scores,
    sampled_categorical_nll,
    sampled_gaussian_nll,
    tfidf_candidates,
)
from rl_energy.errors import import_optional
from rl_energy.nets import mlp


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


# =============================================================================== Part B
def diabetes(seed: int = 0) -> tuple[torch.Tensor, ...]:
    datasets = import_optional("sklearn.datasets", "reproduce_influence part B")
    x, y = datasets.load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    idx = np.random.default_rng(seed).permutation(len(x))
    tr, te = idx[:342], idx[342:]
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return t(x[tr]), t(y[tr, None]), t(x[te]), t(y[te, None])


def sq(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-example squared error ``(f(x) − y)²``."""
    return ((model(batch[0]) - batch[1]) ** 2).sum(-1)


def neg_sq(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The measurement ``f = −(f(x_q) − y_q)²``: positive influence = the sample lowers the query's loss."""
    return -sq(model, batch)


def train_subsets(net: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, steps: int, lr: float,
                  wd: float) -> dict[str, torch.Tensor]:
    """Full-batch Adam from ``net``'s initialisation on every weighted subset at once (``masks`` ``[M, N]``):
    minimises ``Σ m_i ℓ_i / Σ m_i + wd/2 ‖θ‖²``. Returns the stacked parameters ``{name: [M, ...]}``."""
    from torch.func import functional_call, grad, vmap

    params0 = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p: dict[str, torch.Tensor], m: torch.Tensor) -> torch.Tensor:
        err = ((functional_call(net, p, (x,)) - y) ** 2).sum(-1)
        reg = sum((v**2).sum() for v in p.values())
        return (m * err).sum() / m.sum() + 0.5 * wd * reg

    g_fn = vmap(grad(loss))
    params = {k: v.unsqueeze(0).repeat(len(masks), *[1] * v.dim()).clone() for k, v in params0.items()}
    m1 = {k: torch.zeros_like(v) for k, v in params.items()}
    m2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2 = 0.9, 0.999
    for t in range(1, steps + 1):
        g = g_fn(params, masks)
        for k in params:
            m1[k].mul_(b1).add_(g[k], alpha=1 - b1)
            m2[k].mul_(b2).addcmul_(g[k], g[k], value=1 - b2)
            params[k] -= lr * (m1[k] / (1 - b1**t)) / ((m2[k] / (1 - b2**t)).sqrt() + 1e-8)
    return params


def part_b(quick: bool, activation: str = "tanh") -> None:
    torch.manual_seed(0)
    x, y, xq, yq = diabetes()
    n = len(x)
    n_subsets = 32 if quick else 100
    steps, lr, wd = 1500, 3e-3, 0.1
    n_queries = 8 if quick else 20
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    net = mlp(10, [64, 64], 1, activation=act)
    net.keep_fp32 = True
    t0 = time.perf_counter()
    full = train_subsets(net, x, y, torch.ones(1, n), steps, lr, wd)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(full[k][0])
    torch.manual_seed(0)
    init = mlp(10, [64, 64], 1, activation=act)  # the same initialisation as `net` had
    gen = torch.Generator().manual_seed(1)
    masks = (torch.rand(n_subsets, n, generator=gen) < 0.5).float()
    sub = train_subsets(init, x, y, masks, steps, lr, wd)
    from torch.func import functional_call, vmap

    q_idx = torch.arange(n_queries)
    with torch.no_grad():
        preds = vmap(lambda p: functional_call(init, p, (xq[q_idx],)))(sub)  # [M, Q, 1]
        actual = -((preds - yq[q_idx]) ** 2).sum(-1).numpy()  # [M, Q]
        train_mse = float(sq(net, (x, y)).mean())
        test_mse = float(sq(net, (xq, yq)).mean())
    t_retrain = time.perf_counter() - t0
    n_params = sum(p.numel() for p in net.parameters())
    print(f"Part B: load_diabetes, MLP 10-64-64-1 ({activation}, {n_params} parameters), "
          f"{n} train / {len(xq)} test, full-batch Adam {steps} steps (L2 {wd}): train MSE {train_mse:.3f}, test MSE "
          f"{test_mse:.3f}; LDS ground truth: {n_subsets} retrainings on random halves in {t_retrain:.1f} s")
    train_b = [(x, y)]
    query = [(xq[q_idx], yq[q_idx])]

    def gn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # scalar Gaussian output: the true Fisher's expectation over sampled labels is exactly the Gauss-Newton
        # 2 J Jᵀ of (f − y)², i.e. the outer product of the gradient of √2 f
        return math.sqrt(2) * model(batch[0]).sum(-1)

    def sampled(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # (f − y)² is the NLL of N(f, 1/2) up to constants: one label per example sampled from the model
        return 2 * sampled_gaussian_nll(model(batch[0]), sigma=math.sqrt(0.5))

    masks_np = masks.numpy()

    def lds(scores: np.ndarray) -> float:
        pred = masks_np @ scores.T  # [M, Q]: the summed influence of the kept samples
        return float(np.mean([spearman(pred[:, q], actual[:, q]) for q in range(scores.shape[0])]))

    rows = []
    results: dict[str, np.ndarray] = {}
    arms: list[tuple[str, str, dict]] = [("identity", "identity", {}), ("kfac", "kfac", {}), ("ekfac", "ekfac", {}),
                                         ("exact", "exact", {})]
    arms += [(f"lissa ({it} it.)", "lissa", {"lissa_iterations": it}) for it in ((100, 300) if quick else
                                                                                  (100, 300, 1000))]
    minibatches = list(zip(x.split(64), y.split(64), strict=True))
    for label, name, kw in arms:
        torch.manual_seed(0)
        t1 = time.perf_counter()
        inf = Influence(net, method=name, seed=0, **kw).fit(minibatches if name == "lissa" else train_b, gn)
        s = inf.scores(query, neg_sq, train_b, sq).numpy()
        dt = time.perf_counter() - t1
        results[label] = s
        rows.append((label, lds(s), dt))
    t1 = time.perf_counter()
    s_samp = Influence(net, method="ekfac", seed=0).fit(train_b, sampled).scores(query, neg_sq, train_b, sq).numpy()
    rows.append(("ekfac, 1 sampled label/example", lds(s_samp), time.perf_counter() - t1))
    reps = 16
    fit16 = (x.repeat(reps, 1), y.repeat(reps, 1))
    t1 = time.perf_counter()
    s_samp16 = Influence(net, method="ekfac", seed=0).fit([fit16], sampled).scores(query, neg_sq, train_b, sq).numpy()
    rows.append((f"ekfac, {reps} sampled labels/example", lds(s_samp16), time.perf_counter() - t1))
    agree = []
    try:
        kg, kt = kronfluence_scores(net, (x, y), (xq[q_idx], yq[q_idx]), sq, gn, neg_sq)
        rows.append(("kronfluence ekfac", lds(kg), kt["fit"] + kt["score"]))
        ks, kt1 = kronfluence_scores(net, (x, y), (xq[q_idx], yq[q_idx]), sq, sampled, neg_sq, seed=1)
        rows.append(("kronfluence ekfac, 1 sampled label", lds(ks), kt1["fit"] + kt1["score"]))
        ks16, kt16 = kronfluence_scores(net, (x, y), (xq[q_idx], yq[q_idx]), sq, sampled, neg_sq, seed=1,
                                        fit_data=fit16)
        rows.append((f"kronfluence ekfac, {reps} sampled labels", lds(ks16), kt16["fit"] + kt16["score"]))
        for what, a, b in (("exact Gauss-Newton (the arms above)", results["ekfac"], kg),
                           ("1 sampled label per example (independent draws)", s_samp, ks),
                           (f"{reps} sampled labels per example (independent draws)", s_samp16, ks16)):
            agree.append(f"  {what:52s} {np.mean([spearman(a[q], b[q]) for q in range(n_queries)]):.4f}")
    except Exception as exc:  # noqa: BLE001 - report it, never hide it
        agree.append(f"  kronfluence comparison skipped: {exc}")
    print(f"\n{'arm':38s} {'LDS (Spearman)':>15s} {'wall-clock s':>13s}   ({n_queries} queries x {n} train samples; "
          "fit + score)")
    for label, rho, dt in rows:
        print(f"{label:38s} {rho:>15.3f} {dt:>13.3f}")
    print(f"Spearman(ours EK-FAC, kronfluence EK-FAC) over the {n} training samples, mean over {n_queries} queries "
          "(target >= 0.95):")
    print("\n".join(agree))
    print("\nSpearman of each arm's scores with the exact damped Gauss-Newton inverse's (mean over queries)")
    for label, _, _ in arms:
        if label != "exact":
            rho = np.mean([spearman(results[label][q], results["exact"][q]) for q in range(n_queries)])
            print(f"  {label:16s} {rho:.3f}")
    print("\nquery batching (EK-FAC, rank-r SVD of each layer's preconditioned query gradient)")
    pq = Influence(net, method="ekfac", seed=0).fit(train_b, gn)
    pre = pq.preconditioned_query(query, neg_sq)
    print(f"{'rank':>6s} {'LDS':>7s} {'Spearman vs full':>17s}")
    for r in (1, 4, 16, 32):
        s = pq.scores_from_preconditioned(pre, train_b, sq, rank=r).numpy()
        rho = np.mean([spearman(s[q], results["ekfac"][q]) for q in range(n_queries)])
        print(f"{r:>6d} {lds(s):>7.3f} {rho:>17.3f}")
    print("paper (qualitative): EK-FAC about as accurate as iterative IHVPs at a small fraction of their cost")


# =============================================================================== Part A
TEMPLATES = [  # every fact keeps X before Y; each has 6 tokens
    "the capital of {x} is {y}",
    "{x} has its capital at {y}",
    "capital city of {x} : {y}",
    "in {x} the capital is {y}",
    "{x} 's capital city is {y}",
]
DISTRACTORS = ["the language of {x} is {z}", "the river of {x} is {r}"]


def build_corpus(n_facts: int, seed: int = 0) -> tuple[list[list[str]], list[int], list[str]]:
    rng = np.random.default_rng(seed)
    seqs, fact_of = [], []
    for i in range(n_facts):
        for t in TEMPLATES:
            seqs.append(["<s>", *t.format(x=f"X{i}", y=f"Y{i}").split()])
            fact_of.append(i)
        for t in DISTRACTORS:
            seqs.append(["<s>", *t.format(x=f"X{i}", z=f"L{rng.integers(20)}", r=f"R{rng.integers(20)}").split()])
            fact_of.append(-1)
    vocab = sorted({w for s in seqs for w in s} | {"<pad>"})
    return seqs, fact_of, vocab


class WindowLM(nn.Module):
    """Next-token model made only of Linear layers: one-hot tokens → Linear embedding (no bias) → concatenation of the
    last ``window`` positions → :func:`rl_energy.nets.mlp` → logits."""

    def __init__(self, vocab: int, window: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.vocab, self.window = vocab, window
        self.embed = nn.Linear(vocab, dim, bias=False)
        self.head = mlp(window * dim, [hidden], vocab, activation=nn.Tanh)
        self.head.keep_fp32 = True

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """``ctx`` ``[B, T, window]`` token ids → logits ``[B, T, vocab]``."""
        e = self.embed(nn.functional.one_hot(ctx, self.vocab).float())  # [B, T, W, D]
        return self.head(e.flatten(-2))


def windows(ids: torch.Tensor, window: int, pad: int) -> torch.Tensor:
    """``[B, L]`` → contexts ``[B, L − 1, window]`` predicting tokens 1..L−1."""
    padded = torch.cat([torch.full((ids.shape[0], window - 1), pad), ids], 1)
    return torch.stack([padded[:, t:t + window] for t in range(ids.shape[1] - 1)], 1)


def part_a(quick: bool) -> None:
    torch.manual_seed(0)
    n_facts = 60 if quick else 200
    seqs, fact_of, vocab = build_corpus(n_facts)
    tok = {w: i for i, w in enumerate(vocab)}
    pad, window = tok["<pad>"], 6
    ids = torch.tensor([[tok[w] for w in s] for s in seqs])
    ctx, tgt = windows(ids, window, pad), ids[:, 1:]
    lm = WindowLM(len(vocab), window, dim=32, hidden=256 if quick else 512)
    n_params = sum(p.numel() for p in lm.parameters())
    opt = torch.optim.Adam(lm.parameters(), 3e-3)
    epochs = 40 if quick else 60
    t0 = time.perf_counter()
    for _ in range(epochs):
        for b in torch.randperm(len(ids)).split(64):
            logits = lm(ctx[b])
            loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), tgt[b].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = lm(ctx)
        pred_y = logits[:, -1].argmax(-1) == tgt[:, -1]
        acc = float(pred_y[[i for i, f in enumerate(fact_of) if f >= 0]].float().mean())
    print(f"Part A: {n_facts} facts x {len(TEMPLATES)} paraphrases + {len(DISTRACTORS)} distractors each = {len(seqs)} "
          f"sequences, vocabulary {len(vocab)}, LM of Linear layers ({n_params} parameters), {epochs} epochs in "
          f"{time.perf_counter() - t0:.1f} s; final-token (city) accuracy on the fact sequences {acc:.3f}")

    def seq_nll(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        c, t = batch
        return nn.functional.cross_entropy(model(c).transpose(1, 2), t, reduction="none").sum(1)

    gen = torch.Generator().manual_seed(0)

    def fisher(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return sampled_categorical_nll(model(batch[0]), generator=gen)

    def completion_logp(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        c, t = batch  # the last position is the completion
        return torch.log_softmax(model(c)[:, -1], -1).gather(1, t[:, -1:]).squeeze(1)

    train_b = list(zip(ctx.split(256), tgt.split(256), strict=True))
    t1 = time.perf_counter()
    inf = Influence(lm, method="ekfac", seed=0).fit(train_b, fisher)
    t_fit = time.perf_counter() - t1
    n_q = 20 if quick else 50
    facts = np.random.default_rng(1).choice(n_facts, n_q, replace=False)
    other = np.roll(facts, 1)  # controls: the completion's fact, with the other entity taken from another fact
    prompts = {"same order": ("<s> the capital of {x} is {y}", facts, facts),
               "same, other X": ("<s> the capital of {x} is {y}", other, facts),
               "flipped": ("<s> {y} is the capital of {x}", facts, facts),
               "flipped, other Y": ("<s> {y} is the capital of {x}", facts, other)}
    top_k = 50
    fact_arr = np.array(fact_of)
    texts = [" ".join(s[1:]) for s in seqs]
    print(f"EK-FAC fit {t_fit:.1f} s; {n_q} facts queried; measurement f = log p(completion | prompt)")
    print(f"{'query':17s} {'log p':>7s} {'mass on fact (top-50)':>22s} {'best rank of fact seq':>22s} "
          f"{'fact seqs in top-5':>19s} {'tf-idf recall@50':>17s}")
    summary = {}
    for name, (pattern, xs, ys) in prompts.items():
        qs = [pattern.format(x=f"X{i}", y=f"Y{j}").split() for i, j in zip(xs, ys, strict=True)]
        owner = ys if pattern.endswith("{y}") else xs  # the completion's fact
        qids = torch.tensor([[tok[w] for w in s] for s in qs])
        qctx, qtgt = windows(qids, window, pad), qids[:, 1:]
        t2 = time.perf_counter()
        scores = inf.scores([(qctx, qtgt)], completion_logp, train_b, seq_nll, rank=32).numpy()
        t_score = time.perf_counter() - t2
        with torch.no_grad():
            logp = float(completion_logp(lm, (qctx, qtgt)).mean())
        masses, ranks, top5, recall = [], [], [], []
        for qi, f in enumerate(owner):
            s = scores[qi]
            order = np.argsort(-s)
            top = order[:top_k]
            pos = np.clip(s[top], 0, None)
            own = fact_arr[top] == f
            masses.append(pos[own].sum() / max(pos.sum(), 1e-30))
            ranks.append(int(np.flatnonzero(fact_arr[order] == f)[0]) + 1)
            top5.append(int((fact_arr[order[:5]] == f).sum()))
            cand = tfidf_candidates(" ".join(qs[qi][1:]), texts, top_k)
            recall.append(len(set(cand) & set(order[:10])) / 10)
        summary[name] = float(np.mean(masses))
        print(f"{name:17s} {logp:>7.2f} {np.mean(masses):>22.3f} {np.median(ranks):>22.0f} {np.mean(top5):>19.2f} "
              f"{np.mean(recall):>17.2f}   (scoring {t_score:.1f} s, rank-32 query batching)")
    print(f"(mass: share of the top-{top_k} positive influence on the own {len(TEMPLATES)} sequences of the "
          "completion's fact; best rank: median over queries; tf-idf recall@50: share of EK-FAC's top-10 inside "
          "TF-IDF's top-50 candidates; 'other X/Y': the prompt's entity taken from another fact, a control)")
    same = summary["same order"] - summary["same, other X"]
    flip = summary["flipped"] - summary["flipped, other Y"]
    print(f"association mass (query minus its control): same order {same:+.3f}, flipped {flip:+.3f}")
    print("paper: influence of the fact's sequences high for the same order, near zero when the order is flipped; "
          f"ours (raw mass): {summary['same order']:.3f} vs {summary['flipped']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["A", "B", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller settings (about a minute)")
    parser.add_argument("--activation", choices=["tanh", "relu", "both"], default="both",
                        help="hidden activation of part B's MLP (default: both, one after the other)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.part in ("B", "all"):
        for i, activation in enumerate(("tanh", "relu") if args.activation == "both" else (args.activation,)):
            if i:
                print()
            part_b(args.quick, activation)
    if args.part in ("A", "all"):
        if args.part == "all":
            print()
        part_a(args.quick)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
