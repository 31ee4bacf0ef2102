"""Settings every strategy shares (population, operators, top-k: Algorithm 1's names), and
the base of each strategy's own ``strategy_options``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from longrope_search.errors import ConfigError
from longrope_search.validation import SpecModel, config_error, spec_error

PAPER = "the paper: P 64, N1 16, N2 16, k 32, p 0.3, T 40"
MAX_EVALUATIONS = 1_000_000  # candidates in one job: weeks of scoring even for a small model


class SearchSettings(SpecModel):
    """The search's shared settings (a job's ``search:``, ``evolution:`` before): Algorithm 1's
    population, operators and generations, whose top-k early stopping and memetic also use and
    whose budget every strategy takes by default; the paper's defaults for targets up to 256k."""

    population: int = Field(64, ge=2, le=MAX_EVALUATIONS,
                            description="P, candidates in the first generation")
    mutations: int = Field(16, ge=0, le=MAX_EVALUATIONS,
                           description="N1, mutated children per later generation")
    crossovers: int = Field(16, ge=0, le=MAX_EVALUATIONS,
                            description="N2, crossed-over children per later generation")
    top_k: int = Field(32, ge=1, description="k, parents kept from each generation (≤ population)")
    mutation_prob: float = Field(0.3, gt=0, le=1, description="p, chance that a mutation moves "
                                 "each λ_i")
    generations: int = Field(40, ge=0, le=MAX_EVALUATIONS,
                             description="T, generations after the first")

    @model_validator(mode="after")
    def _consistent(self) -> SearchSettings:
        """top_k fits in the population; later generations have children."""
        if self.top_k > self.population:
            raise spec_error(f"top_k {self.top_k} is larger than population {self.population}",
                             f"use top_k ≤ population ({PAPER})", field="top_k")
        if self.children == 0 and self.generations:
            raise spec_error("no mutations and no crossovers", "set mutations or crossovers "
                             f"> 0, or generations: 0 ({PAPER})", field="mutations")
        if self.budget > MAX_EVALUATIONS:
            raise spec_error(f"P + T·(N1 + N2) is {self.budget:,} candidates, more than "
                             f"{MAX_EVALUATIONS:,}", "use fewer generations or children "
                             f"({PAPER}: 1,344)", field="generations")
        return self

    @property
    def children(self) -> int:
        """New candidates per generation after the first: N1 + N2."""
        return self.mutations + self.crossovers

    @property
    def budget(self) -> int:
        """Algorithm 1's evaluations: P + T·(N1 + N2) (pruned ones included)."""
        return self.population + self.generations * self.children


class StrategyOptions(SpecModel):
    """A strategy's ``strategy_options``: one field per option, with its type, default and
    bounds. A strategy without options keeps this empty model, which refuses every key."""


def parse_options(strategy: str, model: type[StrategyOptions],
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` validated by the strategy's ``model``, over its defaults; a bad one is
    refused naming ``strategy_options.<key>``."""
    if options and not model.model_fields:
        key = next(iter(options))
        raise ConfigError(f"strategy_options.{key}", f"strategy {strategy!r} takes no options",
                          "remove strategy_options, or choose a strategy that has this option "
                          "(configs/README.md lists each one's)")
    try:
        return model.model_validate(dict(options)).model_dump()
    except ValidationError as e:
        error = config_error(e, model, root="strategy_options")
    field = error.field if error.field == "strategy_options" else f"strategy_options.{error.field}"
    raise ConfigError(field, error.problem, error.fix)
