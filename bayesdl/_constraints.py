"""Small helpers about distribution supports, shared by guides and samplers."""

from __future__ import annotations

from torch.distributions import constraints

__all__ = ["is_real_support"]


def is_real_support(support: constraints.Constraint) -> bool:
    """True for the whole real line (possibly reinterpreted as an event): no transform needed."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real
