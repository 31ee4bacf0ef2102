"""Errors that tell the user which input is wrong and how to fix it."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input, raised before any expensive work starts.

    The message always has the form ``"<field>: <problem>. Fix: <fix>"`` so that a CLI, an HTTP
    API or a notebook can show the user exactly what to change.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")

    def __reduce__(self) -> tuple:
        # rebuilt from its three parts, so it crosses processes (a Ray worker's error) intact
        return type(self), (self.field, self.problem, self.fix)


class NoRotaryEmbeddingError(ConfigError):
    """The model has no rotary position embedding, so there is nothing to rescale."""
