"""``dfast-serve`` = Ray's ``serve`` CLI with the process-wide Ray settings dfast_serve is tuned for.

    dfast-serve run serve_config.yaml        # instead of: serve run serve_config.yaml
    python -m dfast_serve.serve.launch run serve_config.yaml

Two settings cut time to first token but are read when Ray's own processes start, not by the app,
so ``serve_config.yaml`` cannot carry them (``runtime_env`` reaches only the app's replicas):

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: read by the Serve controller, the HTTP proxy and the replicas at
  start (user code on the replica's event loop instead of a separate thread, the router on the caller's
  loop, gRPC between proxy and replicas, buffered request logs);
* ``RAY_worker_niceness=0``: read by the raylet; Ray starts workers at nice 15 by default, so on a small
  machine any nice-0 process starves the proxy, the router and the replicas.

When ``serve run`` starts a local Ray cluster itself, every Ray process inherits this environment. With
``--address`` to a running cluster, that cluster must have been started with them (the
``ray start`` line of docs/cluster.md and ``cluster.yaml`` set them). A variable already set in the environment wins.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

RAY_PROCESS_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_worker_niceness": "0"}


def environment(base: dict[str, str]) -> dict[str, str]:
    """``base`` plus ``RAY_PROCESS_ENV`` for every variable ``base`` does not set."""
    return {**RAY_PROCESS_ENV, **base}


def serve_cli() -> str:
    """The ``serve`` script beside this interpreter (a venv's bin), else the one on PATH."""
    beside = Path(sys.executable).with_name("serve")
    found = str(beside) if beside.exists() else shutil.which("serve")
    if found is None:
        raise SystemExit("the `serve` command of Ray Serve is not installed: pip install 'ray[serve]'")
    return found


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cli = serve_cli()
    os.execve(cli, [cli, *args], environment(dict(os.environ)))


if __name__ == "__main__":
    main()
