"""Settings every strategy shares: population, operators, top-k (Algorithm 1's names)."""

from __future__ import annotations

from pydantic import Field, model_validator

from longrope_search.validation import SpecModel, spec_error

PAPER = "the paper: P 64, N1 16, N2 16, k 32, p 0.3, T 40"


class EvolutionConfig(SpecModel):
    """Algorithm 1's hyperparameters; defaults are the paper's for targets up to 256k."""

    population: int = Field(64, ge=2, description="P, candidates in the first generation")
    mutations: int = Field(16, ge=0, description="N1, mutated children per later generation")
    crossovers: int = Field(16, ge=0, description="N2, crossed-over children per later "
                            "generation")
    top_k: int = Field(32, ge=1, description="k, parents kept from each generation (≤ population)")
    mutation_prob: float = Field(0.3, gt=0, le=1, description="p, chance that a mutation moves "
                                 "each λ_i")
    generations: int = Field(40, ge=0, description="T, generations after the first")

    @model_validator(mode="after")
    def _consistent(self) -> EvolutionConfig:
        """top_k fits in the population; later generations have children."""
        if self.top_k > self.population:
            raise spec_error(f"top_k {self.top_k} is larger than population {self.population}",
                             f"use top_k ≤ population ({PAPER})", field="top_k")
        if self.children == 0 and self.generations:
            raise spec_error("no mutations and no crossovers", "set mutations or crossovers "
                             f"> 0, or generations: 0 ({PAPER})", field="mutations")
        return self

    @property
    def children(self) -> int:
        """New candidates per generation after the first: N1 + N2."""
        return self.mutations + self.crossovers

    @property
    def budget(self) -> int:
        """Algorithm 1's evaluations: P + T·(N1 + N2) (pruned ones included)."""
        return self.population + self.generations * self.children
