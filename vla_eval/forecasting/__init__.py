"""Failure forecasters: fitted on calibration runs, judged on held-out ones (``vla-eval forecast``);
the streaming side is ``vla_eval.monitors.forecast`` (numpy only)."""
