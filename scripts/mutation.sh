#!/usr/bin/env bash
# Mutation testing of the core with mutmut 3 (config: [tool.mutmut] in pyproject.toml).
# Not part of CI: it takes hours on a small CPU. Results go to docs/testing.md, "Mutation testing".
#
#   scripts/mutation.sh                 # every module below, then the per-module table
#   scripts/mutation.sh 'dfast_serve.engine.masked.policies.*'   # some mutants only (globs)
#   scripts/mutation.sh --summary       # the table of the last run, without running anything
#
# Each mutant runs only the Ray-free tests that called the function it mutates (mutmut collects
# that once, first), fastest first, stopping at the first failure. One worker process by default
# (MUTMUT_CHILDREN=n for more) and one torch thread per process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PYTHONHASHSEED=0

# What is mutated: whole modules, except api/serving.py, of which only OpenAIServing.plan (the
# request planning: model choice, dfast overrides, min_tokens, AR refusals) is in scope.
SCOPE=(
  'dfast_serve.engine.masked.policies.*'
  'dfast_serve.engine.masked.budget.*'
  'dfast_serve.engine.masked.schedule.*'
  'dfast_serve.engine.masked.proposal.*'
  'dfast_serve.engine.masked.confidence.*'
  'dfast_serve.engine.limits.*'
  'dfast_serve.engine.detokenize.*'
  'dfast_serve.engine.sequence.*'
  'dfast_serve.engine.sampling.*'
  'dfast_serve.wire.options.*'
  'dfast_serve.api.body.*'
  'dfast_serve.api.serving.xǁOpenAIServingǁplan__mutmut_*'
  'dfast_serve.api.prompt_limit.*'
  'dfast_serve.api.model_choice.*'
  'dfast_serve.api.protocol.*'
  'dfast_serve.engine.core.*'
  'dfast_serve.engine.masked.family.*'
  'dfast_serve.engine.masked.sequence.*'
  'dfast_serve.engine.ar.family.*'
  'dfast_serve.engine.ar.shape.*'
  'dfast_serve.engine.block.family.*'
  'dfast_serve.engine.block.sequence.*'
  'dfast_serve.engine.block.sampler.*'
)

summary() {
  "$PY" - "${SCOPE[@]}" <<'EOF'
"""Killed / total per module, from mutmut's own records (mutants/**/*.py.meta)."""
import fnmatch, json, sys
from collections import Counter, defaultdict
from pathlib import Path
from mutmut.stats import status_by_exit_code

scope = sys.argv[1:]
by_module = defaultdict(Counter)
survivors = []
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if not any(fnmatch.fnmatch(name, pattern) for pattern in scope):
            continue
        module = name.split(".x")[0]
        status = status_by_exit_code[code]
        by_module[module][status] += 1
        if status not in ("killed", "caught by type check", "not checked", "timeout"):
            survivors.append(f"{status:12} {name}")
total = Counter()
print(f"| module | killed / total | % | survived | no tests | timeout | not checked |")
print(f"|---|---|---|---|---|---|---|")
for module, c in sorted(by_module.items()):
    n = sum(c.values()); k = c["killed"] + c["timeout"]
    total.update(c)
    print(f"| `{module}` | {k} / {n} | {100 * k / n:.1f} | {c['survived']} | {c['no tests']} | {c['timeout']} | {c['not checked']} |")
n = sum(total.values()); k = total["killed"] + total["timeout"]
print(f"| **all** | **{k} / {n}** | **{100 * k / max(n, 1):.1f}** | {total['survived']} | {total['no tests']} | {total['timeout']} | {total['not checked']} |")
print("\nnot killed (timeouts count as killed: the mutant never finished its tests):")
print("\n".join(survivors) or "none")
EOF
}

# Mutants in scope with a given status, one name a line (globs optional).
names_with_status() {
  local status="$1"; shift
  "$PY" - "$status" "$@" <<'PYEOF'
import fnmatch, json, sys
from pathlib import Path
from mutmut.stats import status_by_exit_code
status, patterns = sys.argv[1], sys.argv[2:]
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if any(fnmatch.fnmatch(name, p) for p in patterns) and status_by_exit_code[code] == status:
            print(name)
PYEOF
}

if [[ "${1:-}" == "--summary" ]]; then summary; exit; fi
if [[ "${1:-}" == "--resume" || "${1:-}" == "--rerun-survivors" ]]; then
  # mutmut re-runs every mutant named on its command line, so a resumed run names only these:
  # --resume [globs]: the unchecked mutants (of these globs, default the whole scope), in that order;
  # --rerun-survivors [globs]: the survivors again, after tests were added.
  mode="$1"; shift
  patterns=("$@"); (( ${#patterns[@]} )) || patterns=("${SCOPE[@]}")
  status="survived"; [[ $mode == --resume ]] && status="not checked"
  names=()
  for p in "${patterns[@]}"; do
    mapfile -t found < <(names_with_status "$status" "$p")
    names+=("${found[@]}")
  done
  (( ${#names[@]} )) || { echo "nothing to run"; summary; exit; }
  "$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "${names[@]}"
  summary
  exit
fi
if [[ "${1:-}" == "--survivors" ]]; then  # each survivor's diff, to kill or argue
  summary | awk '$1 == "survived" || $1 == "no" || $1 == "suspicious" || $1 == "segfault" {print $NF}' |
    while read -r name; do echo "== $name"; "$PY" -m mutmut show "$name" | grep '^[-+][^-+]'; done
  exit
fi
names=("$@")
(( ${#names[@]} )) || names=("${SCOPE[@]}")
"$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "${names[@]}"
summary
