"""Algorithms, one per file; each is registered by import path in :data:`rl_energy.registry.AGENTS`."""
