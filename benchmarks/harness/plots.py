"""Figures from benchmark runs: a streaming timeline, TTFT distributions across saved results, and the
TTFT waterfall's stacked bars.

    python -m benchmarks.harness.plots ttft run1/serving.json run2/serving.json -o ttft.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness.results import load_result  # noqa: E402


def plot_timeline(series: Mapping[str, Sequence[tuple[float, int]]], path: str | Path,
                  floor_ms: float | None = None, title: str = "") -> Path:
    """Answer tokens streamed vs time, one point per chunk, one series per schedule."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        times = [0.0] + [t for t, _ in points]
        tokens = [0] + [n for _, n in points]
        (line,) = ax.step(times, tokens, where="post", alpha=0.5)
        ax.plot(times[1:], tokens[1:], "o", color=line.get_color(), label=f"{name} ({len(points)} chunks)")
    if floor_ms is not None:
        ax.axvline(floor_ms, linestyle="--", color="grey", label=f"floor ({floor_ms:.1f} ms)")
    ax.set(xlabel="time since request start (ms)", ylabel="answer tokens streamed", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _ttfts(result: Mapping[str, Any]) -> list[float]:
    return sorted(v for v in result["per_request"]["ttft_ms"] if v is not None)


def plot_ttft_distributions(results: Sequence[Mapping[str, Any]], path: str | Path, bins: int = 30) -> Path:
    """Histogram and empirical CDF of TTFT (ms), one series per result (named by its label)."""
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        values = _ttfts(result)
        if not values:
            continue
        label = str(result.get("label", "?"))
        hist.hist(values, bins=bins, alpha=0.5, label=label)
        cdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
    hist.set(xlabel="TTFT (ms)", ylabel="requests", title="TTFT histogram")
    cdf.set(xlabel="TTFT (ms)", ylabel="share of requests", title="TTFT CDF", ylim=(0, 1.02))
    for ax in (hist, cdf):
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_waterfall(results: Sequence[Mapping[str, Any]], segments: Sequence[tuple[str, str]], path: str | Path) -> Path:
    """One panel per engine, one bar per Ray variant: the p50 of each segment stacked (bottom first,
    ``segments`` = (key, label)), the served TTFT p50 as a black tick."""
    bars = [(f"{r['variant']}\n{kind}", e["summary"]) for r in results for kind, e in r["engines"].items()]
    kinds = list(dict.fromkeys(kind for r in results for kind in r["engines"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 6), squeeze=False)
    for ax, engine_filter in zip(axes[0], kinds):
        chosen = [(label, s) for label, s in bars if label.endswith(engine_filter)]
        bottoms = [0.0] * len(chosen)
        for key, label in segments:
            heights = [max(s[f"{key}_50"] or 0.0, 0.0) for _, s in chosen]
            ax.bar([lab for lab, _ in chosen], heights, bottom=bottoms, label=label)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        ax.scatter([lab for lab, _ in chosen], [s["served_50"] for _, s in chosen], color="black", marker="_", s=400,
                   label="served TTFT p50", zorder=3)
        ax.set_title(f"{engine_filter}: TTFT p50 by segment (a negative residue is drawn as 0)", fontsize=9)
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="figure", required=True)
    ttft = sub.add_parser("ttft", help="TTFT histogram + CDF from saved results")
    ttft.add_argument("results", nargs="+", help="result JSON files (serving or engine)")
    ttft.add_argument("-o", "--output", default="ttft.png")
    ttft.add_argument("--bins", type=int, default=30)
    args = ap.parse_args(argv)
    out = plot_ttft_distributions([load_result(p) for p in args.results], args.output, args.bins)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
