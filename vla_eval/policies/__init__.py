"""Policies behind one small protocol; ``make_policy`` builds them by name (heavy imports late)."""
from vla_eval.policies.base import ActionBatch, Policy

__all__ = ["ActionBatch", "Policy"]
