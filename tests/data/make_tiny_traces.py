"""Regenerate tests/data/tiny_traces/<tag>.jsonl: real traces of the shipped tiny OpenVLA, chosen
before looking at them (tasks 3 and 7, seed 0, every run tag), from a held-out baseline sweep
and the fault runs:

    python tests/data/make_tiny_traces.py runs/tiny-eval runs/tiny-faults tests/data/tiny_traces
"""
import sys
from pathlib import Path

from vla_eval.records import JsonlWriter, read_jsonl

PICK = {(3, 0), (7, 0)}  # (task, seed)


def main(baseline_dir: str, faults_dir: str, dst: str) -> None:
    logs = [Path(baseline_dir) / "baseline.jsonl"] + sorted(Path(faults_dir).glob("*.jsonl"))
    Path(dst).mkdir(parents=True, exist_ok=True)
    stale = [Path(dst) / p.name for p in logs if (Path(dst) / p.name).exists()]
    if stale:  # JsonlWriter appends: an old file would end up holding every episode twice
        sys.exit(f"{', '.join(map(str, stale))} exist: delete them first to regenerate")
    for path in logs:  # one file per run tag, as a run folder holds them
        log = read_jsonl(path)
        with JsonlWriter(Path(dst) / path.name) as w:
            for ep in log.episodes:
                if (ep.task_id, ep.seed) in PICK:
                    for s in log.steps_of(ep):
                        w.write(s)
                    w.write(ep)
        print(Path(dst) / path.name)


if __name__ == "__main__":
    main(*sys.argv[1:4])
