"""Plots `make bench` results (target/bench/results.json) into docs/.

    python3 bench/plot.py [results.json] [output.png]

Needs matplotlib (e.g. `python3 -m venv /tmp/plot && /tmp/plot/bin/pip install
matplotlib`, then `BENCH_PYTHON=/tmp/plot/bin/python make bench`).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json"
    target = sys.argv[2] if len(sys.argv) > 2 else "docs/bench-throughput.png"
    with open(source) as f:
        results = json.load(f)

    labels, values, colors = [], [], []
    if "jetstream_publish" in results:
        r = results["jetstream_publish"]
        labels.append("JetStream publish\n(async-nats alone)")
        values.append(r["events"] / r["seconds"])
        colors.append("#9aa5b1")
    if "redis_apply" in results:
        r = results["redis_apply"]
        labels.append("apply step\n(Store::apply)")
        values.append(r["events"] / r["seconds"])
        colors.append("#9aa5b1")
    for run in results.get("end_to_end", []):
        n = run["replicas"]
        labels.append(f"end to end\n{n} processor{'s' if n > 1 else ''}")
        values.append(run["events"] / run["complete_seconds"])
        colors.append("#3e7cb1")
    if not values:
        sys.exit("no throughput results to plot")

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    bars = ax.bar(labels, [v / 1000 for v in values], color=colors)
    for bar, value in zip(bars, values):
        ax.annotate(
            f"{value / 1000:.0f}k",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    machine = results.get("machine", {})
    ax.set_ylabel("thousand events / s")
    ax.set_title(
        f"sessionfold throughput, {machine.get('nproc', '?')} cores, {machine.get('date', '')}",
        fontsize=10,
    )
    ax.tick_params(axis="x", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(target)
    print(f"plot: wrote {target}")


if __name__ == "__main__":
    main()
