"""Data the toolkit ships: published numbers, checkpoints, norm stats. Read with ``load``."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """``load("published")`` -> the parsed ``configs/published.json``."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())
