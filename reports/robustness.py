"""The robustness profile of a run with perturbation tags (``camera:2``, ``no_flip+light:1``): each
perturbed run against the same run unperturbed on the same (task, seed) pairs. Per family and level:
success with its Wilson interval, the paired difference with Newcombe's score interval, McNemar's
exact p, a verdict that says when the pairs are too few to tell, and the failure-mode mix."""
from __future__ import annotations

from vla_eval.perturbations import FAMILIES, split_tag
from vla_eval.records import RunLog
from vla_eval.reports.failures import dominant, explain
from vla_eval.reports.stats import mcnemar_exact_p, paired_difference_ci, rate_of, smallest_detectable_change

ALPHA = 0.05


def verdict(diff: float, ci: tuple[float, float], p: float, n: int) -> str:
    if p < ALPHA:
        return f"{'hurts' if diff < 0 else 'helps'} (p {p:.2g})"
    floor = smallest_detectable_change(n, ALPHA)
    if floor is None:
        return f"underpowered: {n} pairs cannot reach p < {ALPHA} whatever happens"
    if ci[0] < -floor or ci[1] > floor:
        return (f"underpowered: {n} pairs show only changes of {100 * floor:.0f} pp or more; the interval still "
                f"allows {100 * ci[0]:+.0f} to {100 * ci[1]:+.0f} pp")
    return f"no detectable change (interval {100 * ci[0]:+.0f} to {100 * ci[1]:+.0f} pp)"


def profile(logs: dict[str, RunLog], explained: dict | None = None) -> list[dict]:
    """One row per perturbed run tag whose unperturbed run is in ``logs``; ``explained``: the
    tags' failure modes if the caller has them already (the report does)."""
    explained = explained or {}
    rows = []
    for tag, log in logs.items():
        faults, p = split_tag(tag)
        ref = "+".join(faults) or "baseline"
        if p is None or ref not in logs:
            continue
        a = {(e.task_id, e.seed): e.success for e in logs[ref].episodes if e.outcome != "error"}
        b = {(e.task_id, e.seed): e.success for e in log.episodes if e.outcome != "error"}
        common = sorted(set(a) & set(b))
        if not common:
            continue
        both = sum(a[k] and b[k] for k in common)
        only_ref = sum(a[k] and not b[k] for k in common)
        only_pert = sum(b[k] and not a[k] for k in common)
        n = len(common)
        diff = (only_pert - only_ref) / n
        ci = paired_difference_ci(both, only_ref, only_pert, n - both - only_ref - only_pert)
        pval = mcnemar_exact_p(only_ref, only_pert)
        rate = rate_of("success" if b[k] else "failure" for k in common)
        lo, hi = rate.wilson95
        rows.append({"tag": tag, "family": p.family, "level": p.level, "against": ref, "pairs": n,
                     "success": f"{100 * rate.p:.0f}% ({rate.successes}/{n})", "wilson": f"{100 * lo:.0f}–{100 * hi:.0f}%",
                     "ref": f"{100 * sum(a[k] for k in common) / n:.0f}%", "diff": f"{100 * diff:+.0f} pp",
                     "ci": f"{100 * ci[0]:+.0f} to {100 * ci[1]:+.0f} pp", "p": f"{pval:.2g}",
                     "verdict": verdict(diff, ci, pval, n), "modes": dominant(explained.get(tag) or explain(tag, log)),
                     "p_success": rate.p, "p_lo": lo, "p_hi": hi, "p_ref": sum(a[k] for k in common) / n})
    order = list(FAMILIES)
    return sorted(rows, key=lambda r: (r["against"], order.index(r["family"]), r["level"]))


def profile_plot(rows: list[dict]) -> bytes:
    """Success against level per family (level 0: the unperturbed run on the same pairs), Wilson bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_eval.reports.plots import png_bytes

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for family in dict.fromkeys(r["family"] for r in rows):
        xs = [r for r in rows if r["family"] == family and r["against"] == "baseline"]
        if not xs:
            continue
        levels = [0] + [r["level"] for r in xs]
        ys = [xs[0]["p_ref"]] + [r["p_success"] for r in xs]
        err = [[0] + [r["p_success"] - r["p_lo"] for r in xs], [0] + [r["p_hi"] - r["p_success"] for r in xs]]
        ax.errorbar(levels, ys, yerr=err, marker="o", capsize=3, label=family)
    ax.set_xticks([0, 1, 2, 3], ["none", "1", "2", "3"])
    ax.set_xlabel("perturbation level")
    ax.set_ylabel("success")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Success against perturbation level (95% Wilson intervals)")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    return png_bytes(fig)
