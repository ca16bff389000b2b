"""`always`: evaluate the reference branch at every guided step (standard CFG cost).

Ho & Salimans, "Classifier-Free Diffusion Guidance" (arXiv 2207.12598).
"""

from __future__ import annotations

from .base import Policy


class Always(Policy):
    """Both branches at every step where the schedule guides."""

    name = "always"
    paper = "Ho & Salimans, 2021 (arXiv 2207.12598)"
    summary = "reference evaluated at every guided step"
