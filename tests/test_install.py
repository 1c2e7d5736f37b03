"""What a pip user gets: every third-party import the package makes is declared in the extra that
needs it (read statically from the source), and the built wheel, installed with its real
dependencies into a clean venv one extra at a time, runs what that extra promises.

The heavy extras (sim, openvla: torch, MuJoCo) are checked by the import trace of a real tiny
episode in tests/test_wheel.py; here the light ones are installed for real."""
from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("vla_eval", "monitors", "sims", "configs", "drills", "reports")
# Installed apart, as the README says: libero with --no-deps (its own pins pull training stacks).
INSTALLED_APART = {"libero"}
TRACES = ROOT / "tests" / "data" / "tiny_traces"  # held-out runs of the tiny policy, as logged


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """{'core' | extra: normalized distribution names} from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name_of = lambda req: normalize(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])  # noqa: E731
    out = {"core": {name_of(r) for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        out[extra] = {name_of(r) for r in reqs}
    return out


def third_party_imports() -> dict[str, list[tuple[str, str | None]]]:
    """{top-level module: [(file, extra named by require() or None)]} over the installed folders:
    import statements and ``require("module", "extra", ...)`` calls."""
    found: dict[str, list] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                hits: list[tuple[str, str | None]] = []
                if isinstance(node, ast.Import):
                    hits = [(a.name, None) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    hits = [(node.module, None)]
                elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
                      and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                    hits = [(node.args[0].value, node.args[1].value)]
                for module, extra in hits:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "vla_eval":
                        found.setdefault(top, []).append((str(path.relative_to(ROOT)), extra))
    return found


def test_every_third_party_import_is_declared_in_an_extra():
    extras = declared()
    every = set().union(*extras.values())
    dists_of = md.packages_distributions()
    problems = []
    for module, places in sorted(third_party_imports().items()):
        if module in INSTALLED_APART:
            continue
        dists = {normalize(d) for d in dists_of.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported in {places[0][0]}) is not installed here, so not checkable")
        elif not dists & every:
            problems.append(f"{module} (imported in {places[0][0]}) comes from {sorted(dists)}, declared nowhere")
        for path, extra in places:  # require("scipy.stats", "report", ...) must name an extra that has it
            if extra is not None and not dists & (extras.get(extra, set()) | extras["core"]):
                problems.append(f"{path}: require({module!r}, {extra!r}) but extra {extra!r} does not declare "
                                f"{sorted(dists)}")
    assert not problems, "\n".join(problems)


# -- the built wheel, installed with its dependencies -----------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    from conftest import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _venv_with(wheel: Path, extra: str, where: Path) -> Path:
    """A clean venv with the wheel and its declared dependencies for ``extra`` (pip resolves them)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    spec = f"{wheel}[{extra}]" if extra != "core" else str(wheel)
    r = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        spec], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "NewConnectionError" in r.stderr):
        pytest.skip(f"no package index reachable to resolve the dependencies: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return where / "bin"


def _cli(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "vla-eval"), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def _a_stored_run(folder: Path) -> Path:
    from conftest import make_run

    outcomes = {(t, s): ("success" if (t + s) % 3 else "failure") for t in (0, 1) for s in range(4)}
    return make_run(folder, outcomes, tags=("baseline", "no_flip"), policy="scripted", steps=12)


def test_the_core_install_runs_help_and_the_monitor_api(wheel, tmp_path):
    bin_dir = _venv_with(wheel, "core", tmp_path / "venv")
    r = _cli(bin_dir, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "sweep" in r.stdout, r.stderr
    code = ("import numpy as np\nfrom vla_eval.monitors import RuntimeMonitor\nm = RuntimeMonitor()\n"
            "for t in range(30):\n    m.update({'action': np.r_[np.zeros(6), 1.0], 'reward': 0.0, 'done': False})\n"
            "m.finish()\nimport sys\nassert 'torch' not in sys.modules\nprint('ok')")
    r = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_the_report_extra_reads_a_stored_run(wheel, tmp_path):
    """The laptop path: report, compare and monitor on a run folder, exit 0 and no traceback."""
    bin_dir = _venv_with(wheel, "report", tmp_path / "venv")
    run_a, run_b = _a_stored_run(tmp_path / "a"), _a_stored_run(tmp_path / "b")
    for args in (("report", run_a), ("compare", run_a, run_b, "--html", tmp_path / "cmp.html"),
                 ("monitor", TRACES / "baseline.jsonl", TRACES / "bad_unnorm.jsonl", "--thresholds",
                  ROOT / "configs" / "monitors" / "tiny-libero_object.json")):
        r = _cli(bin_dir, *args, cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stdout[-1500:], r.stderr[-1500:])
    assert (run_a / "report.html").stat().st_size > 10_000 and (tmp_path / "cmp.html").exists()
