"""Policies behind one small protocol; ``factory.make_policies`` builds them by name (heavy imports late)."""
from vla_eval.policies.base import ActionBatch, Policy

__all__ = ["ActionBatch", "Policy"]
