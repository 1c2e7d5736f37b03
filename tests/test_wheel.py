"""The wheel works outside the repo: built from the tracked files, installed into a fresh venv
in a temp folder (the toolkit's dependencies come from this environment; the clone is not on
the path), then `vla-eval setup --check` and one short real episode of the shipped tiny policy.
`twine check --strict` reads the wheel's metadata the way PyPI's upload does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.libero


def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_wheel_installs_in_a_fresh_venv_and_runs_an_episode(tmp_path):
    from conftest import build_wheel

    wheel = build_wheel(tmp_path)
    _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)])  # metadata and README render on PyPI
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("vla_eval/tinyvla/dagger.py", "vla_eval/faults.py", "vla_eval/reports/templates/report.html.j2",
                   "vla_eval/configs/checkpoints/tiny-openvla-libero_object/model.safetensors"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # The dependencies (torch, libero, ...) from this environment: a plain path entry, so this
    # environment's editable install of the clone (a .pth hook) is not picked up.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(py), "-c", "import vla_eval; print(vla_eval.__file__)"], cwd=work, env=env).stdout
    assert where.startswith(str(venv)), where
    cli = str(venv / "bin" / "vla-eval")
    _run([cli, "setup", "--check"], cwd=work, env=env)
    # The episode through the console script's entry point, noting every module it imported.
    trace = work / "modules.json"
    code = ("import json, sys\nfrom vla_eval.cli import main\nrc = main(sys.argv[1:])\n"
            f"open({str(trace)!r}, 'w').write(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))\n"
            "sys.exit(rc)")
    r = _run([str(py), "-c", code, "run", "--policy", "tiny", "--task", "0", "--seed", "0", "--max-steps", "3",
              "--no-progress", "--log", str(work / "ep.jsonl")], cwd=work, env=env)
    assert "baseline:" in r.stdout and (work / "ep.jsonl").exists()
    _every_import_is_a_declared_dependency(json.loads(trace.read_text()), extras=("sim", "openvla"))


# Imported by a dependency only because it is installed here (try/except imports): a clean venv
# without them runs the same episode. Found with `python -X importtime` on a tiny episode.
OPTIONAL_IMPORTS = {
    "colorama": "torch._inductor, if present", "cffi": "glfw (via mujoco.gl_context), if present",
    "_cffi_backend": "the same", "pycparser": "the same", "backports": "httpx's zstd decoder, if present",
    "google": "accelerate's config menu (protobuf), if present",
}


def _every_import_is_a_declared_dependency(modules: list[str], extras: tuple[str, ...]) -> None:
    """The sim + openvla promise without a second torch install: every third-party module a real
    episode imported comes from a distribution these extras pull in (their requirements, closed
    over the requirements of those), or from libero, installed apart as the README says."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    def closure(dist: str, extra: tuple[str, ...] = ()) -> set[str]:
        seen, todo = set(), [(dist, extra)]
        while todo:
            name, ex = todo.pop()
            key = canon(name)
            if key in seen:
                continue
            seen.add(key)
            try:
                requires = md.requires(name) or ()
            except md.PackageNotFoundError:  # declared by libero's own pins, never installed (--no-deps)
                continue
            for text in requires:
                req = Requirement(text)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ex or ("",)):
                    todo.append((req.name, tuple(req.extras)))
        return seen

    canon = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
    allowed = closure("vla-eval-libero", extras) | closure("libero")
    dists_of = md.packages_distributions()
    stray = sorted(m for m in modules if m not in sys.stdlib_module_names and m not in ("vla_eval", "__main__")
                   and m not in OPTIONAL_IMPORTS
                   and dists_of.get(m) and not {canon(d) for d in dists_of[m]} & allowed)
    assert not stray, f"imported, but no extra of {extras} pulls them in: {stray}"
