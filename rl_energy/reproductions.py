"""The 24 papers of rl-energy and their reproduction scripts: one table behind ``rl-energy reproduce --list`` and the
summary at the top of ``docs/reproductions.md`` (:func:`summary_markdown`; a test keeps the two equal).

Each entry's ``status`` is the reading of its section in ``docs/reproductions.md`` (or ``docs/benchmarks.md`` for
MEow), in one of :data:`STATUSES`; ``runtime`` is the wall time measured there on the 2-core machine (a budget of
30 minutes applies to every script); ``claim`` is the short form of the paper's claim against ours.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rl_energy.errors import ConfigError

STATUSES = ("reproduced", "partly", "not reproduced", "bound only")
"""``reproduced``: the paper's claims hold here (in direction; numbers are for qualitative comparison); ``partly``:
some hold, some do not; ``not reproduced``: the main claim does not hold in our setting; ``bound only``: synthetic
data from the fitted model itself, so only noise propagation is measured."""


@dataclass(frozen=True)
class Reproduction:
    name: str
    paper: str
    script: str
    status: str
    runtime: str
    claim: str
    section: str
    """The heading's start in docs/reproductions.md (or benchmarks.md), for the reader."""


REPRODUCTIONS: tuple[Reproduction, ...] = (
    Reproduction("meow", "MEow / EBFlow: MaxEnt RL with energy-based normalizing flows (Chao et al. 2024)",
                 "bench_learning.py", "reproduced", "hours (6 runs × 100k steps)",
                 "EBFlow learns Hopper-v4: 446.7 mean at 100k (3 seeds) vs the paper's code ≈ 385",
                 "benchmarks.md: EBFlow vs SAC on Hopper-v4"),
    Reproduction("bubble", "Position control of an acoustic cavitation bubble (Klapcsik et al. 2023)",
                 "reproduce_bubble.py", "reproduced", "23 min (training) + 1 min",
                 "DDPG reaches 96 % of targets, 30.9× faster than linear theory on average (paper: up to 7×)",
                 "Position control of an acoustic cavitation bubble"),
    Reproduction("gflownet", "Forward-looking GFlowNets (Pan et al. 2023)", "reproduce_gflownet.py", "reproduced",
                 "29 min", "FL-DB finds higher-reward sets than DB at equal steps (the code's FL-DB at every size)",
                 "GFlowNets: DB, TB, SubTB and FL-DB"),
    Reproduction("td_stability", "Target networks and TD stability (Fellows, Smith & Whiteson 2023)",
                 "reproduce_td_stability.py", "reproduced", "not recorded",
                 "TD diverges on Baird, k = 10 more slowly, large k is stable (in kind)",
                 "Target networks and TD stability"),
    Reproduction("svgg", "SVGG goal curricula (Castanet, Sigaud & Lamprier 2023)", "reproduce_svgg.py",
                 "not reproduced", "90 min (22 runs × 1–1.5M steps)",
                 "SVGG − MEGA coverage at 1M steps −0.067 and −0.175 (3 seeds, every seed "
                 "behind; the paper: SVGG ahead), no faster recovery; SVGG − RANDOM +0.14 and +0.27",
                 "SVGG goal curricula"),
    Reproduction("sointer", "SOInter: interpreting structured-output black boxes (ICLR 2024)", "reproduce_sointer.py",
                 "partly", "16.1 min", "SOInter ≥ L2X-style at every coupling; the gap grows with it only roughly",
                 "SOInter"),
    Reproduction("retasa", "ReTaSA: continuous target shift (ICLR 2024)", "reproduce_retasa.py", "partly", "11 min",
                 "weight error between unweighted and oracle; falls with n in 3 of 4 settings", "ReTaSA"),
    Reproduction("r3d", "R3D: regression discontinuity with distribution-valued outcomes (2025)", "reproduce_r3d.py",
                 "reproduced", "3.7 min", "unbiased and calibrated; the naive pooled estimator is biased", "R3D"),
    Reproduction("docking", "ESF: equivariant scalar fields for docking with FFTs (ICLR 2024)", "reproduce_docking.py",
                 "partly", "12.4 min (3 seeds), 19.3 min (default, loaded)",
                 "FFT = brute force, 11–16× cheaper; ESF-N +0.17 on perturbed pockets; Vina ahead on clean: no",
                 "ESF: equivariant scalar fields"),
    Reproduction("cisir", "CISIR: highly imbalanced regression (2025)", "reproduce_cisir.py", "not reproduced",
                 "25 min", "CISIR does not beat MSE on rare MAE with the paper's α", "CISIR"),
    Reproduction("influence", "LLM generalisation with influence functions, EK-FAC (Grosse et al. 2023)",
                 "reproduce_influence.py", "partly", "not recorded",
                 "kronfluence agreement and the order flip reproduce; LiSSA correlates better with retraining",
                 "EK-FAC influence functions"),
    Reproduction("energy_diffusion", "Distilled energy diffusion models + SMC (AISTATS 2025)",
                 "reproduce_energy_diffusion.py", "partly", "17.7 min",
                 "SMC over energies corrects score-only composition (exact energies); distilled ones do not, here",
                 "Distilled energy diffusion models"),
    Reproduction("egeot", "Energy-guided entropic OT (ICLR 2024)", "reproduce_egeot.py", "reproduced", "11–16 min",
                 "single-digit BW2-UVP; small ε is hardest", "Energy-guided entropic OT"),
    Reproduction("ired", "IRED: iterative reasoning through energy diffusion (ICML 2024)", "reproduce_ired.py",
                 "not reproduced", "4.5 min", "feed-forward wins on the hard inverse split", "IRED"),
    Reproduction("hierpoly", "Hierarchical polynomials with three-layer networks (2023)", "reproduce_hierpoly.py",
                 "partly", "19.2 min", "stage 1 learns p; kernels fail at n ~ d³ only partly",
                 "Hierarchical polynomials"),
    Reproduction("ebm_training", "Hitchhiker's guide to EBMs / Jarzynski CD (Carbone 2024)",
                 "reproduce_ebm_training.py", "reproduced", "16 min",
                 "CD, PCD and DSM misweight the modes; Jarzynski-weighted CD recovers them (direction)",
                 "Energy-based model training"),
    Reproduction("sso", "SSO: target-based surrogates for stochastic optimisation (ICML 2023)", "reproduce_sso.py",
                 "partly", "8.7 min", "reproduced on breast_cancer and LQR imitation, not on the synthetic set",
                 "SSO"),
    Reproduction("radpo", "Ra-DPO: risk-aware DPO under nested risk measures (2025)", "reproduce_radpo.py", "partly",
                 "12.9 min", "Ra-DPO2 has ~8× less SeqKL than DPO, but so does TDPO2", "Ra-DPO"),
    Reproduction("mlff_shift", "Distribution shifts of MLFFs: test-time refinement (2025)",
                 "reproduce_mlff_shift.py", "partly", "15.3 min",
                 "test-time training helps (3/3 seeds); radius refinement does not", "MLFF distribution shifts"),
    Reproduction("asteroid", "ASTEROID: data-cost-aware MLFF training (ICML 2023)", "reproduce_asteroid.py",
                 "partly", "20.5 min", "cheap pre-training helps 6/6; the bias weighting itself 0/6", "ASTEROID"),
    Reproduction("golf", "GOLF: gradual optimisation learning for conformers (ICLR 2024)", "reproduce_golf.py",
                 "partly", "12.6 min", "GOLF beats fixed trajectories on pct; 0 % success for every NNP", "GOLF"),
    Reproduction("radio", "Radio reconstruction of inclined air showers (2025)", "reproduce_radio.py", "bound only",
                 "13.6 min", "0.04–0.12° and 7–20 % E_em per zenith bin (paper 0.07°, 5 %) on synthetic events",
                 "Radio reconstruction of inclined air showers"),
    Reproduction("mhe", "Minimum hyperspherical energy (NeurIPS 2018)", "reproduce_mhe.py", "partly", "14.9 min",
                 "Thomson minima reached; the digits gain is within noise", "Minimum hyperspherical energy"),
    Reproduction("scn", "SCN: spherical channels for atomic interactions (NeurIPS 2022)", "reproduce_scn.py",
                 "partly", "33.3 min (over the 30 min budget)",
                 "SO(2) mini-SCN beats SchNet at equal parameters; SCN's dense layers do not", "SCN"),
)


def by_name(name: str) -> Reproduction:
    for r in REPRODUCTIONS:
        if r.name == name:
            return r
    raise ConfigError(f"unknown reproduction '{name}'; valid: {', '.join(r.name for r in REPRODUCTIONS)}")


def scripts_dir() -> Path:
    """The ``scripts/`` folder of the source checkout (the scripts are not installed with the package)."""
    path = Path(__file__).resolve().parents[1] / "scripts"
    if not path.is_dir():
        raise ConfigError(f"the reproduction scripts ship with the source checkout, not the installed package "
                          f"(no {path}); clone the repository and `pip install -e .` it")
    return path


def summary_markdown() -> str:
    """The summary table at the top of docs/reproductions.md."""
    lines = ["| paper | command | status | runtime (2 cores) | ours against the claim |", "|---|---|---|---|---|"]
    for r in REPRODUCTIONS:
        cmd = f"`rl-energy reproduce {r.name}`"
        lines.append(f"| {r.paper} | {cmd} | {r.status} | {r.runtime} | {r.claim} |")
    return "\n".join(lines)


def run(name: str, args: list[str]) -> int:
    """Run ``scripts/<script>`` with ``args`` in this Python; its exit status."""
    r = by_name(name)
    script = scripts_dir() / r.script
    return subprocess.call([sys.executable, str(script), *args])
