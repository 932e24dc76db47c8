"""User errors shared by the whole package; this module imports nothing else of rl_energy.

* :class:`ConfigError`: a bad configuration value, name or file (the CLI prints it on one line and
  exits with status 2); :func:`require` raises it naming ``section.key``.
* :class:`MissingExtraError` / :func:`import_optional` / :func:`require_extra`: an optional package that is not
  installed; the message names the package and the extra that installs it, and only the command that needs it
  fails. :func:`run_script` gives the scripts under ``scripts/`` the CLI's one-line report of it (and of any
  :class:`ConfigError`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


class ConfigError(ValueError):
    """A user error in a configuration file or override; the message names the key."""


class MissingExtraError(ConfigError):
    """An optional dependency is missing; the message says which extra installs it."""


OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "numba": ("numba", "bubble"),
    "sklearn": ("scikit-learn", "sklearn"),
    "scipy": ("scipy", "sklearn"),
    "torchgfn": ("torchgfn", "gflownet-bench"),
    "gfn": ("torchgfn", "gflownet-bench"),
    "moviepy": ("moviepy", "video"),
    "rliable": ("rliable", "bench"),
    "ot": ("pot", "ot"),
    "pyro": ("pyro-ppl", "bench"),
    "lime": ("lime", "interpret"),
    "shap": ("shap", "interpret"),
    "kronfluence": ("kronfluence", "influence"),
    "vaderSentiment": ("vaderSentiment", "align"),
    "ase": ("ase", "atoms"),
    "rdkit": ("rdkit", "atoms"),
    "tblite": ("tblite", "atoms"),
    "e3nn": ("e3nn", "atoms"),
    "ray": ("ray", "ray"),
}
"""``import name -> (PyPI name, rl-energy extra that installs it)`` for every optional dependency."""

INSTALL_HINTS: dict[str, str] = {
    # kronfluence's metadata requires torchvision (which it never imports), and the newest torchvision pins the
    # newest (CUDA) torch: install its real dependencies through the extra, then the package without its own.
    "kronfluence": "pip install 'rl-energy[influence]' && pip install --no-deps kronfluence",
}
"""Install commands for the optional packages whose plain ``pip install`` would go wrong."""


def missing_extra_message(module: str, purpose: str = "") -> str:
    pip_name, extra = OPTIONAL_PACKAGES.get(module.split(".")[0], (module, ""))
    what = f"{purpose} needs" if purpose else "needs"
    how = INSTALL_HINTS.get(module.split(".")[0]) or (f"pip install 'rl-energy[{extra}]'" if extra
                                                       else f"pip install {pip_name}")
    return f"{what} the optional package '{pip_name}', which is not installed: {how}".strip()


def import_optional(module: str, purpose: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` naming the package and its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken: show the real error
        raise MissingExtraError(missing_extra_message(module, purpose)) from None


def require_extra(extra: str, purpose: str = "") -> None:
    """:class:`MissingExtraError` naming the first package of ``extra`` (in :data:`OPTIONAL_PACKAGES`) that is not
    installed; nothing is imported (``find_spec``), so the check is free where everything is there."""
    modules = [module for module, (_, name) in OPTIONAL_PACKAGES.items() if name == extra]
    if not modules:
        raise ValueError(f"unknown extra {extra!r}")
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a meta-path finder that refuses the name
            found = False
        if not found:
            raise MissingExtraError(missing_extra_message(module, purpose))


def run_script(main: Callable[[], int]) -> int:
    """``main()``; a user error (a :class:`ConfigError`, such as a missing optional package) is reported in one
    line on stderr (``error: ...``, exit status 2), as the CLI reports it."""
    try:
        return main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def require(obj: Any, key: str, ok: bool, requirement: str, section: str = "agent") -> None:
    """Raise :class:`ConfigError` naming ``section.key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{section}.{key}' must be {requirement}, got {getattr(obj, key)!r}")
