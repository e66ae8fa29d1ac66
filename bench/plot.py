"""Plots `make bench` results (target/bench/results.json) into docs/.

    python3 bench/plot.py [results.json] [output.png] [before.json]

With a third argument (the results of a run of the code before a change),
each bar gets a lighter "before" bar beside it. Needs matplotlib (e.g.
`python3 -m venv /tmp/plot && /tmp/plot/bin/pip install matplotlib`, then
`BENCH_PYTHON=/tmp/plot/bin/python make bench`).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def throughputs(results):
    """(label, events/s) of every throughput measurement in `results`."""
    bars = []
    if "jetstream_publish" in results:
        r = results["jetstream_publish"]
        bars.append(("JetStream publish\n(async-nats alone)", r["events"] / r["seconds"]))
    if "redis_apply" in results:
        r = results["redis_apply"]
        bars.append(("apply step\n(Store::apply)", r["events"] / r["seconds"]))
    for run in results.get("end_to_end", []):
        n = run["replicas"]
        bars.append(
            (f"end to end\n{n} processor{'s' if n > 1 else ''}", run["events"] / run["complete_seconds"])
        )
    return bars


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json"
    target = sys.argv[2] if len(sys.argv) > 2 else "docs/bench-throughput.png"
    with open(source) as f:
        results = json.load(f)
    before = None
    if len(sys.argv) > 3:
        with open(sys.argv[3]) as f:
            before = dict(throughputs(json.load(f)))

    bars = throughputs(results)
    if not bars:
        sys.exit("no throughput results to plot")
    labels = [label for label, _ in bars]
    fig, ax = plt.subplots(figsize=(8.5, 4.4), dpi=110)
    width = 0.38 if before else 0.7
    xs = range(len(bars))

    def annotate(x, value):
        ax.annotate(f"{value / 1000:.0f}k", (x, value), ha="center", va="bottom", fontsize=8)

    if before:
        for x, (label, _) in zip(xs, bars):
            if label in before:
                ax.bar(x - width / 2, before[label], width, color="#c8ced6",
                       label="before" if x == 0 else None)
                annotate(x - width / 2, before[label])
    offset = width / 2 if before else 0
    colors = ["#7b8794" if not label.startswith("end to end") else "#3e7cb1" for label in labels]
    for x, (_, value), color in zip(xs, bars, colors):
        ax.bar(x + offset, value, width, color=color, label="after" if (before and x == 0) else None)
        annotate(x + offset, value)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("events / s (log scale)")
    machine = results.get("machine", {})
    ax.set_title(
        f"sessionfold throughput, {machine.get('nproc', '?')} cores, {machine.get('date', '')}",
        fontsize=10,
    )
    if before:
        ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(target)
    print(f"plot: wrote {target}")


if __name__ == "__main__":
    main()
