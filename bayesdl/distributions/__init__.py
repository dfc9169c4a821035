"""Conditional distributions p(y | x) as modules: mixture density networks (and flows)."""
