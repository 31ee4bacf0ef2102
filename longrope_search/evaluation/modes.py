"""How a candidate is scored at L': one vocabulary for the job spec, the scorer and the CLI.

``truncate`` scores one window of L' tokens per document, ``sliding`` slides L'-token windows
over longer documents (``scoring.stride`` apart), both by the perplexity scorer
(:mod:`.perplexity`); ``needle`` hides passkeys in the documents and scores their answers.
"""

from __future__ import annotations

from typing import Literal, get_args

WindowMode = Literal["truncate", "sliding"]  # the perplexity scorer's windows
ScoringMode = Literal[WindowMode, "needle"]  # a job's scoring.mode

WINDOW_MODES: tuple[str, ...] = get_args(WindowMode)
SCORING_MODES: tuple[str, ...] = get_args(ScoringMode)  # Literal flattens the nested one
TRUNCATE, SLIDING, NEEDLE = SCORING_MODES
