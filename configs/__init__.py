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


def shipped_checkpoint(family: str, suite: str) -> Path:
    """A checkpoint folder shipped with the toolkit (``checkpoints.json``: family -> suite -> path)."""
    from vla_eval.errors import UsageError

    table = load("checkpoints").get(family, {})
    if suite not in table:
        raise UsageError(f"no shipped {family} checkpoint for suite {suite!r}; available for: "
                         f"{', '.join(table) or 'none'}")
    path = CONFIG_DIR / table[suite]
    if not (path / "config.json").exists():
        raise UsageError(f"the shipped checkpoint {path} is missing or incomplete (no config.json); reinstall "
                         f"the package, or rebuild it: vla-eval collect-demos && vla-eval train-tiny")
    return path


def shipped_thresholds(policy: str, suite: str, checkpoint: str | None = None) -> Path | None:
    """Monitor thresholds calibrated for a shipped policy (``monitors/<policy>-<suite>.json``:
    fitted on calibration seeds of its real traces), or None (the generic defaults apply). A run
    of ``--policy openvla --checkpoint <a shipped checkpoint folder>`` is that checkpoint's family
    (``--policy tiny`` is the same weights by name)."""
    if checkpoint:
        for family, suites in load("checkpoints").items():
            shipped = suites.get(suite) if isinstance(suites, dict) else None
            if shipped and Path(checkpoint).is_dir() and Path(checkpoint).resolve() == (CONFIG_DIR / shipped).resolve():
                policy = family
    path = CONFIG_DIR / "monitors" / f"{policy}-{suite}.json"
    return path if path.is_file() else None
