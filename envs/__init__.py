"""rl-energy's own environments, registered with Gymnasium under the ``rl_energy/`` namespace.

Each env family lives in its own module; :data:`ENV_SPECS` names its classes by import path, so
importing :mod:`rl_energy` registers every id without importing the (possibly heavy) env modules,
and ``gym.make("rl_energy/<Name>-v0")`` imports the one it needs.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

ENV_SPECS: dict[str, dict] = {
    "rl_energy/BubblePosition-v0": {
        "entry_point": "rl_energy.envs.bubble:BubblePositionEnv",
        "vector_entry_point": "rl_energy.envs.bubble:BubblePositionVectorEnv",
    },
    "rl_energy/Baird-v0": {"entry_point": "rl_energy.envs.baird:BairdEnv", "max_episode_steps": 1000},
    "rl_energy/PointMaze-Open-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                    "max_episode_steps": 30, "kwargs": {"maze": "open"}},
    "rl_energy/PointMaze-UMaze-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                     "max_episode_steps": 30, "kwargs": {"maze": "umaze"}},
    "rl_energy/PointMaze-MultiRoom-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                         "max_episode_steps": 30, "kwargs": {"maze": "multiroom"}},
    # the SVGG paper's thin-wall mazes ("MAZE 1-4")
    **{f"rl_energy/PointMaze-{name}-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                          "max_episode_steps": 30, "kwargs": {"maze": maze}}
       for name, maze in (("SquarePBCS0", "square_pbcs_0"), ("SquarePBCS1", "square_pbcs_1"),
                          ("Snail", "snail"), ("Snake", "snake"))},
    "rl_energy/HyperGrid-v0": {"entry_point": "rl_energy.envs.hypergrid:HyperGridEnv"},
    "rl_energy/SetGeneration-v0": {"entry_point": "rl_energy.envs.set_generation:SetGenerationEnv"},
    # one-step tasks (envs/tasks/): supervised and statistical papers as contextual bandits
    "rl_energy/HierPoly-v0": {"entry_point": "rl_energy.envs.tasks.hierpoly:HierPolyTask"},
    "rl_energy/ImbalancedRegression-v0": {
        "entry_point": "rl_energy.envs.tasks.imbalanced_regression:ImbalancedRegressionTask"},
    "rl_energy/EnergyMixture-v0": {"entry_point": "rl_energy.envs.tasks.energy_mixture:EnergyMixtureTask"},
    "rl_energy/EntropicOT-v0": {"entry_point": "rl_energy.envs.tasks.entropic_ot:EntropicOTTask"},
    "rl_energy/MatrixInverse-v0": {"entry_point": "rl_energy.envs.tasks.matrix_reasoning:MatrixInverseTask"},
    "rl_energy/MatrixCompletion-v0": {"entry_point": "rl_energy.envs.tasks.matrix_reasoning:MatrixCompletionTask"},
    "rl_energy/Classification-v0": {"entry_point": "rl_energy.envs.tasks.classification:ClassificationTask"},
    "rl_energy/LQRImitation-v0": {"entry_point": "rl_energy.envs.tasks.lqr_imitation:LQRImitationTask"},
    "rl_energy/Thomson-v0": {"entry_point": "rl_energy.envs.tasks.thomson:ThomsonTask"},
    "rl_energy/TargetShiftRegression-v0": {
        "entry_point": "rl_energy.envs.tasks.target_shift:TargetShiftRegressionTask"},
    "rl_energy/DistributionalRDD-v0": {"entry_point": "rl_energy.envs.tasks.distributional_rdd:DistributionalRDDTask"},
    "rl_energy/StructuredInterpretation-v0": {
        "entry_point": "rl_energy.envs.tasks.structured_interpretation:StructuredInterpretationTask"},
    "rl_energy/SentimentPreference-v0": {"entry_point": "rl_energy.envs.sentiment_preference:SentimentPreferenceEnv"},
    # atomistic papers (rl_energy/atoms/; the `atoms` extra)
    "rl_energy/S2EF-v0": {"entry_point": "rl_energy.envs.tasks.s2ef:S2EFTask"},
    "rl_energy/ConformerRelax-v0": {"entry_point": "rl_energy.envs.conformer_relax:ConformerRelaxEnv",
                                    "max_episode_steps": 100},
    # exact energies over large structured action spaces: FFT docking (§4), radio shower reconstruction (§17)
    "rl_energy/Docking-v0": {"entry_point": "rl_energy.envs.tasks.docking:DockingTask"},
    "rl_energy/RadioShower-v0": {"entry_point": "rl_energy.envs.tasks.radio_shower:RadioShowerTask"},
}
"""``id -> gymnasium.register keyword arguments`` for every env family module."""



def _ids_whose_class(predicate: Callable[[type], bool]) -> list[str]:
    """rl_energy's env ids whose class satisfies ``predicate`` (imports each env module; an env whose
    optional dependency is missing is left out)."""
    from rl_energy.errors import ConfigError
    from rl_energy.registry import env_class

    out = []
    for env_id in ENV_SPECS:
        try:
            cls = env_class(env_id)
        except (ImportError, ConfigError):
            continue
        if cls is not None and predicate(cls):
            out.append(env_id)
    return out


def linear_mdp_env_ids() -> list[str]:
    """The envs whose ``unwrapped.linear_mdp()`` gives a :class:`rl_energy.analysis.td_stability.LinearMDP`
    (for ``rl-energy analyze td``)."""
    return _ids_whose_class(lambda cls: callable(getattr(cls, "linear_mdp", None)))


def gflownet_env_ids() -> list[str]:
    """The envs whose ``unwrapped.dag`` is a :class:`rl_energy.envs.dag.DAGEnv` (for GFlowNet agents)."""
    from rl_energy.envs.dag import DAGGymEnv

    return _ids_whose_class(lambda cls: issubclass(cls, DAGGymEnv))


def task_env_ids() -> list[str]:
    """The one-step tasks (:class:`rl_energy.envs.tasks.OneStepTask`, for the ``contexts`` loop)."""
    from rl_energy.envs.tasks.base import OneStepTask

    return _ids_whose_class(lambda cls: issubclass(cls, OneStepTask))


def register_all() -> None:
    for env_id, kwargs in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)


register_all()
