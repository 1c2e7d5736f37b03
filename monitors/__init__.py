"""Predicates and the streaming runtime monitor. Imports numpy only, so a robot control
loop can use it without torch or the simulator."""
from vla_eval.monitors.predicates import PREDICATES, Thresholds, Verdict
from vla_eval.monitors.stream import RuntimeMonitor, classify, evaluate

__all__ = ["PREDICATES", "RuntimeMonitor", "Thresholds", "Verdict", "classify", "evaluate"]
