"""Algorithms, one per file; each registers itself with :func:`rl_energy.registry.register_agent`."""
