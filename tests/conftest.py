"""Shared fixtures: the embedded models load once per test session."""

from __future__ import annotations

import os

# Ray reads these when it is imported, so they are set before any test module imports it.
# A second node cannot join a token-auth cluster without the token:
os.environ["RAY_AUTH_MODE"] = "disabled"
# Ray rewrites 127.0.0.1 in addresses to the machine's interface IP unless this is off; off,
# every Ray process (the test driver, `serve run`, workers) stays on loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray workers run at nice 15 by default and starve under any nice-0 load on 2 cores.
os.environ.setdefault("RAY_worker_niceness", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_mdlm():
    from dfast_serve.models.embedded import load_tiny_mdlm

    return load_tiny_mdlm()


@pytest.fixture(scope="session")
def smollm2():
    from dfast_serve.models.embedded import load_smollm2

    return load_smollm2()
