"""The plot of every plan tried: summed layer latency against the metric, the Pareto front marked (PNG)."""

from __future__ import annotations

from pathlib import Path

from tvm_lut.autotuning.plan import Plan


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none has lower-or-equal latency and a higher-or-equal metric
    with one of them strictly better. Points are (latency, metric); lower latency and higher metric are better."""
    front = []
    for i, (lat, metric) in enumerate(points):
        dominated = any(other_lat <= lat and other_metric >= metric and (other_lat, other_metric) != (lat, metric)
                        for other_lat, other_metric in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_plans(plans: list[Plan], path: Path, title: str = "autotune: every plan tried",
               chosen: Plan | None = None) -> Path:
    """Write the plot of the evaluated `plans` (the exact model as a reference point and the budget line), with
    the `chosen` plan's whole-model latencies (compiled, timed beside the exact model) when it has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [p for p in plans if p.metric is not None]
    points = [(p.latency_us, p.metric) for p in evaluated]
    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(6, 4))
    if evaluated:
        axes.scatter([x for x, _ in points], [y for _, y in points], color="tab:blue", label="plans tried")
        for index, (x, y) in enumerate(points):
            axes.annotate(str(index + 1), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="tab:red",
                  label="Pareto front")
        reference = evaluated[0]
        axes.scatter([reference.exact_us], [reference.exact_metric], marker="*", s=150, color="black",
                     label="exact model")
        if reference.budget is not None:
            axes.axhline(reference.exact_metric - reference.budget, linestyle="--", color="gray",
                         label="budget (exact - max drop)")
    if chosen is not None and chosen.whole_us is not None:
        restored = f"; restored: {', '.join(chosen.restored)}" if chosen.restored else ""
        title += (f"\nwhole model, timed together: exact {chosen.whole_exact_us:.1f} us, chosen plan "
                  f"{chosen.whole_us:.1f} us{restored}")
    axes.set_xlabel("summed layer latency (us, each layer measured alone)")
    axes.set_ylabel("metric (eval_fn, higher is better)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
