"""Where OpenVLA's pinned stack lives (``vla-eval setup --pins`` installs it): a side folder put
first on PYTHONPATH only by the processes that run OpenVLA's own code or test compatibility with it."""
from __future__ import annotations

from pathlib import Path

from vla_eval.sims.assets import SetupError, cache_dir

PINNED_STACK = ("transformers==4.40.1", "tokenizers==0.19.1", "huggingface_hub==0.23.4", "timm==0.9.10")


def torchvision_pin() -> str:
    """The torchvision release made with the running torch (2.N.p pairs with 0.(N+15).p): OpenVLA's
    processor needs its Python transforms, which must import against this torch."""
    import re

    import torch

    m = re.match(r"2\.(\d+)\.(\d+)", torch.__version__)
    if not m:
        raise SetupError(f"torch {torch.__version__}: no torchvision pairing known; install one by hand into "
                         f"{pins_dir()}")
    return f"torchvision==0.{int(m.group(1)) + 15}.{m.group(2)}"


def pins_dir() -> Path:
    return cache_dir() / "pins" / "openvla-4.40.1"


def pins_installed(folder: Path | None = None) -> bool:
    folder = folder or pins_dir()
    return all((folder / f"{name.split('==')[0]}-{name.split('==')[1]}.dist-info").is_dir()
               for name in PINNED_STACK) and any(folder.glob("torchvision-*.dist-info"))
