"""Before/after a refactor: the TTFT waterfall and the decoding table of two commits, back to back.

    python -m benchmarks.compare_commits --before fdda8eb --rounds 2

Checks the ``--before`` commit out into a temporary git worktree and runs, for each round, its TTFT
waterfall (in-process engine and serving TTFT, served TTFT through Ray + HTTP; one Ray variant, both
engines) and then this tree's; then the same for the decoding table (diffusion variants at one
answer length). Each side runs its own code with its own module names (the benchmarks moved in the
consolidation), on the same machine, alternating, so that load drifts hit both. The table gives
each figure's median over the rounds for both sides and their ratio (after / before); the JSON keeps
every run's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.peers import ROOT
from benchmarks.harness.results import finish, markdown_table

WATERFALL = {"benchmarks/serving/waterfall.py": "benchmarks.serving.waterfall",
             "benchmarks/ttft_waterfall.py": "benchmarks.ttft_waterfall"}
DECODING = {"benchmarks/engine/decoding.py": "benchmarks.engine.decoding", "benchmarks/decoding.py": "benchmarks.decoding"}
WATERFALL_FIGURES = ["engine_ttft_50", "serving_ttft_50", "served_50", "forward_50", "inprocess_ttft_over_forward",
                     "inter_chunk_overhead_ms_50"]
DECODING_FIGURES = {"NFE": "NFE", "TTFT p50 (ms)": "TTFT p50 (ms)", "tok/s": "tok/s"}


def module_in(tree: Path, candidates: dict[str, str]) -> str:
    return next(module for path, module in candidates.items() if (tree / path).exists())


def run(tree: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", *args], cwd=tree, env=env, check=True)


def waterfall(tree: Path, out: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    run(tree, [module_in(tree, WATERFALL), "--variants", args.variant, "--engines", "diffusion,ar",
               "--num-prompts", str(args.num_prompts), "--out", str(out)])
    result = json.loads((out / "waterfall.json").read_text())
    engines = result["results"][0]["engines"]
    return {engine: {k: data["summary"][k] for k in WATERFALL_FIGURES} for engine, data in engines.items()}


def decoding(tree: Path, out: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    path = out / "decoding.json"
    run(tree, [module_in(tree, DECODING), "--max-tokens", str(args.max_tokens), "--num-prompts", str(args.num_prompts),
               "--save-result", str(path)])
    result = json.loads(path.read_text())
    header = result["header"]
    return {f"{row[header.index('variant')]}": {name: row[header.index(column)]
                                               for name, column in DECODING_FIGURES.items()}
            for row in result["rows"]}


def median_of(runs: list[dict[str, dict[str, float]]], key: str, figure: str) -> float:
    return statistics.median(r[key][figure] for r in runs)


def table(name: str, before: list[dict], after: list[dict], figures: list[str]) -> list[list[Any]]:
    rows = []
    for key in before[0]:
        for figure in figures:
            b, a = median_of(before, key, figure), median_of(after, key, figure)
            rows.append([name, key, figure, b, a, a / b if b else None])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the commit to compare this tree with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64, help="the decoding table's answer length")
    ap.add_argument("--variant", default="nice0+throughput", help="the waterfall's Ray variant")
    ap.add_argument("--save-result", help="the result JSON (default: this run's results folder)")
    args = ap.parse_args()
    runs: dict[str, dict[str, list]] = {side: {"waterfall": [], "decoding": []} for side in ("before", "after")}
    with tempfile.TemporaryDirectory(prefix="compare-") as scratch:
        old = Path(scratch) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT, check=True)
        try:
            trees = {"before": old, "after": ROOT}
            for round_ in range(args.rounds):
                for bench, measure in (("waterfall", waterfall), ("decoding", decoding)):
                    for side, tree in trees.items():
                        out = Path(scratch) / f"{side}-{bench}-{round_}"
                        out.mkdir()
                        runs[side][bench].append(measure(tree, out, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    rows = (table("waterfall", runs["before"]["waterfall"], runs["after"]["waterfall"], WATERFALL_FIGURES)
            + table("decoding", runs["before"]["decoding"], runs["after"]["decoding"], list(DECODING_FIGURES)))
    header = ["benchmark", "engine / variant", "figure", f"before ({args.before})", "after", "after / before"]
    finish({"before": args.before, "runs": runs, "header": header, "rows": rows}, "compare_commits", args,
           table=markdown_table(header, rows), out=args.save_result)


if __name__ == "__main__":
    main()
