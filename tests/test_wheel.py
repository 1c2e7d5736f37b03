"""The wheel works outside the repo: built from the tracked files, installed into a fresh venv
in a temp folder (the toolkit's dependencies come from this environment; the clone is not on
the path), then `vla-eval setup --check` and one short real episode of the shipped tiny policy.
`twine check --strict` reads the wheel's metadata the way PyPI's upload does."""
from __future__ import annotations

import os
import shutil
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
    src = tmp_path / "src"
    files = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)])
    (wheel,) = (tmp_path / "dist").glob("vla_eval_libero-*.whl")
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
    r = _run([cli, "run", "--policy", "tiny", "--task", "0", "--seed", "0", "--max-steps", "3", "--no-progress",
              "--log", str(work / "ep.jsonl")], cwd=work, env=env)
    assert "baseline:" in r.stdout and (work / "ep.jsonl").exists()
