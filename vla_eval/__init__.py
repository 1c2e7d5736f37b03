"""vla-eval: evaluation and runtime monitors for OpenVLA-style policies on LIBERO.

Importing this package is cheap: torch, transformers and libero load lazily inside the
factories that need them.
"""
__version__ = "0.2.0"


def __getattr__(name: str):
    """``from vla_eval import run_episode, load_run`` without importing them (and numpy) eagerly."""
    if name in ("run_episode", "load_run"):
        from vla_eval import api

        return getattr(api, name)
    raise AttributeError(f"module 'vla_eval' has no attribute {name!r}")
