"""Bare vLLM's greedy answers, for comparison with ``engine: vllm`` (run with the vLLM environment's python).

    vllm_reference.py MODEL_DIR ANSWERS_JSON < cases.json

``cases.json``: ``{"prompts": [...], "chats": [[messages], ...], "max_tokens": N}``. vLLM's offline ``LLM``
with the settings the served replica uses on a CPU (float32, eager); its own tokenization and chat template.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    cases = json.load(sys.stdin)
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, seed=0)
    greedy = SamplingParams(temperature=0, max_tokens=cases["max_tokens"])
    prompts = [o.outputs[0].text for o in llm.generate(cases["prompts"], greedy)]
    chats = [o.outputs[0].text for o in llm.chat(cases["chats"], greedy)]
    with open(sys.argv[2], "w") as out:  # not stdout: vLLM logs there
        json.dump({"prompts": prompts, "chats": chats}, out)


if __name__ == "__main__":
    main()
