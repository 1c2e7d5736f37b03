"""Simulators behind a small Env protocol: the LIBERO adapter and parallel env workers."""
from vla_eval.sims.protocol import SUITES, Env, Observation, StepResult, SuiteSpec, suite_spec

__all__ = ["SUITES", "Env", "Observation", "StepResult", "SuiteSpec", "suite_spec"]
