"""vla-eval: evaluation and runtime monitors for OpenVLA-style policies on LIBERO.

Importing this package is cheap: torch, transformers and libero load lazily inside the
factories that need them.
"""
__version__ = "0.1.0"
