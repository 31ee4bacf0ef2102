"""Search strategies: what to try next. One table maps a name to a strategy class.

Built in: ``evolution`` (LongRoPE's Algorithm 1), ``steady`` (the same operators without the
generation barrier), ``tpe``, ``cmaes`` and ``random`` (Optuna's samplers), ``gradient``
(projected gradient descent on λ through the frozen model), ``memetic`` (Algorithm 1 with
gradient polish of its best candidates). A strategy of your
own is a :class:`~longrope_search.search.strategies.base.Strategy` subclass, made known either
by calling :func:`register_strategy` before the search starts (Python API), or from an installed
package through an entry point, which the CLI and the service pick up::

    # your package's pyproject.toml
    [project.entry-points."longrope_search.strategies"]
    annealing = "my_package.annealing:Annealing"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from longrope_search.errors import ConfigError
from longrope_search.search.strategies.base import SearchProblem, Strategy
from longrope_search.search.strategies.evolution import Evolution
from longrope_search.search.strategies.gradient import GradientDescent
from longrope_search.search.strategies.memetic import Memetic
from longrope_search.search.strategies.samplers import TPE, CmaEs, RandomSearch
from longrope_search.search.strategies.steady import SteadyState

ENTRY_POINT_GROUP = "longrope_search.strategies"

STRATEGIES: dict[str, type[Strategy]] = {
    "evolution": Evolution,
    "steady": SteadyState,
    "tpe": TPE,
    "cmaes": CmaEs,
    "random": RandomSearch,
    "gradient": GradientDescent,
    "memetic": Memetic,
}


def register_strategy(name: str, cls: type[Strategy]) -> None:
    """Make ``cls`` available as ``strategy: <name>`` in job specs."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    STRATEGIES[name] = cls


def _installed() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def strategy_names() -> tuple[str, ...]:
    """Every strategy a job spec may name: built in, registered and installed."""
    return tuple(dict.fromkeys([*STRATEGIES, *_installed()]))


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        installed = _installed()
        if name not in installed:
            raise ConfigError("strategy", f"unknown strategy {name!r}",
                              f"use one of {strategy_names()}")
        register_strategy(name, installed[name].load())  # type: ignore[attr-defined]
    return STRATEGIES[name]


def options_schema() -> dict[str, Any]:
    """The JSON schema of ``strategy_options``: any one of the built-in strategies' schemas."""
    return {"type": "object", "maxProperties": 32,
            "anyOf": [{**cls.Options.model_json_schema(), "title": f"{name} options"}
                      for name, cls in STRATEGIES.items()]}


__all__ = ["ENTRY_POINT_GROUP", "STRATEGIES", "SearchProblem", "Strategy", "get_strategy",
           "options_schema", "register_strategy", "strategy_names"]
