"""``dfast-serve`` runs Ray's ``serve`` CLI with the process-wide Ray settings (no Ray started here)."""

from __future__ import annotations

import pytest

from dfast_serve.serve import launch


def test_serve_cli_gets_the_ray_settings_and_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(launch.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "5")  # set by the user: kept
    launch.main(["run", "serve_config.yaml"])
    (path, argv, env), = calls
    assert path.endswith("serve") and argv[1:] == ["run", "serve_config.yaml"]
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_worker_niceness"] == "5"
