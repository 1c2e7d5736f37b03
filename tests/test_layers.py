"""One namespace, layers that import one way, no cycles, and nothing generic at the top level."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> installed package (pyproject's package-dir mapping).
PACKAGES = {"vla_eval": "vla_eval", "monitors": "vla_eval.monitors", "sims": "vla_eval.sims",
            "configs": "vla_eval.configs", "drills": "vla_eval.drills", "reports": "vla_eval.reports"}

# Lower numbers are lower layers; a module may import its own layer or below, never above.
# The longest matching prefix decides a module's layer.
LAYERS = {
    "vla_eval": 6,  # the package root re-exports run_episode/load_run lazily: a facade on top
    "vla_eval.errors": 0, "vla_eval.configs": 0, "vla_eval.faults": 0,  # shared errors, data, the fault table
    "vla_eval.argtypes": 0, "vla_eval.safe_json": 0, "vla_eval.threads": 0,  # CLI types; bounded reader; CPU threads
    "vla_eval.verbs": 0, "vla_eval.perturbations": 0,                 # ... and the perturbation families                                               # the table of lazily imported subcommands
    "vla_eval.records": 1, "vla_eval.monitors": 1,                     # shared types; numpy-only monitor
    "vla_eval.failure_modes": 1,                                       # failure modes read from the records
    "vla_eval.sims": 2, "vla_eval.rundir": 2, "vla_eval.features": 2,  # simulators; the run-folder readers
    "vla_eval.policies": 3,                                           # policies (over sims' Observation)
    "vla_eval.rollout": 4, "vla_eval.runner": 4, "vla_eval.sweep": 4, "vla_eval.api": 4, "vla_eval.preflight": 4,
    "vla_eval.tinyvla": 4, "vla_eval.videos": 4, "vla_eval.failure_check": 4,                      # demos and training of the tiny policy
    "vla_eval.reports": 5, "vla_eval.drills": 5,                       # reports over runs; CPU drills
    "vla_eval.tinyvla.dagger": 5, "vla_eval.diagnose": 5,              # DAgger rounds; fault ranking over run folders
    "vla_eval.forecasting": 5,                                         # forecasters fitted and judged on runs
    "vla_eval.cli": 6, "vla_eval.run_flags": 6, "vla_eval.setup": 6, "vla_eval.monitors.cli": 6, "vla_eval.drills.cli": 6, "vla_eval.tinyvla.cli": 6,
    "vla_eval.forecasting.cli": 6,  # command lines on top
}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every toolkit module ``module`` imports, at the top or lazily inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "vla_eval" or m.startswith("vla_eval.")}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
              for m, deps in _graph().items() for i in deps if _layer(i) > _layer(m)]
    assert not upward, "\n".join(upward)


def _closure(graph: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return seen


def test_reports_read_runs_through_records_and_the_run_folder_reader_alone():
    """Rendering a report never imports the orchestrator or a policy (not even through another module)."""
    graph = _graph()
    reports = [m for m in graph if m.startswith("vla_eval.reports")]
    reached = _closure(graph, reports)
    bad = sorted(m for m in reached if m.startswith(("vla_eval.sweep", "vla_eval.policies", "vla_eval.runner")))
    assert not bad, bad


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_every_source_folder_is_installed_under_the_namespace():
    text = (ROOT / "pyproject.toml").read_text()
    for folder, package in PACKAGES.items():
        assert f'"{package}" = "{folder}"' in text


@pytest.fixture()
def hostile_project(tmp_path):
    """A user's project with the generic names most ML repos have."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "__init__.py").write_text("raise ImportError('the user configs package was imported')\n")
    for name in ("reports", "monitors", "sims", "drills"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user module {name} was imported')\n")
    return tmp_path


def test_cli_and_monitor_work_inside_a_project_with_generic_names(hostile_project):
    env = {**os.environ, "PYTHONPATH": str(hostile_project)}
    code = ("from vla_eval.monitors import RuntimeMonitor; from vla_eval.configs import load; "
            "from vla_eval.reports.stats import rate_of; from vla_eval.sims.protocol import suite_spec; "
            "m = RuntimeMonitor(); m.update({'action': [0.0] * 7}); print(sorted(load('published'))[:2])")
    r = subprocess.run([sys.executable, "-c", code], cwd=hostile_project, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", "--help"], cwd=hostile_project, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for cmd in ("sweep", "drill", "monitor", "small", "bench-policy"):
        assert cmd in r.stdout


def test_no_generic_top_level_names_are_importable_from_elsewhere(tmp_path):
    """Outside the repo, only ``vla_eval`` is installed: ``import configs`` finds nothing of ours."""
    code = ("import importlib.util as u; print([n for n in ('configs','reports','monitors','sims','drills') "
            "if u.find_spec(n) is not None])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_subcommand_whose_module_cannot_import_says_what_to_install(monkeypatch, capsys):
    import importlib

    from vla_eval import cli

    real_import = importlib.import_module

    def no_drills(name, *args, **kw):
        if name.startswith("vla_eval.drills"):
            raise ImportError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(importlib, "import_module", no_drills)
    assert cli.main(["small", "all"]) == 2
    err = capsys.readouterr().err
    assert "vla-eval small is unavailable" in err and "pip install 'vla-eval-libero[drills]'" in err


def test_help_imports_no_verb_module_and_a_verb_imports_only_its_own():
    """``vla-eval --help`` lists every verb from the table without importing one; running a verb
    imports its module and no other verb's."""
    from vla_eval.verbs import VERBS

    code = ("import sys\nfrom vla_eval.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "from vla_eval.verbs import VERBS\n"
            "print(sorted({v.module for v in VERBS.values()} & set(sys.modules)))")
    for argv, expected in ((["--help"], []), (["monitor", "--help"], ["vla_eval.monitors.cli"])):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == str(expected), r.stdout[-500:]
        if argv == ["--help"]:
            assert all(name in r.stdout for name in VERBS)
