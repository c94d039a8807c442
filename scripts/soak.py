"""Bounded soak test against a running dfast_serve: many concurrent streams for a fixed time.

Reports requests done, errors by kind, hung clients, client-side latency, ``/health`` (liveness)
and ``/ready`` (readiness) under load, and the
resident memory of the Ray Serve processes on this machine (router, model replicas, proxy)
over time, so that a leak shows as steady growth. Not part of the test suite::

    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8000 --concurrency 32 --duration 60 \\
        --output soak.json

Fault injection (``--kill-replica-every S``): every S seconds a model replica actor is killed
(``ray.kill``, as a crashed process or a lost node would end it; the script joins the Ray cluster
with ``--ray-address``; ``--kill routers`` kills router replicas instead) while clients stream; ``--stalled-clients N`` adds N clients that send a
streaming request and never read a byte. The report counts every request's ending: complete,
error event + ``[DONE]``, 503 (shed), or hung (no ending before the client's timeout), so that
"nothing lost, nothing hung" is a number::

    .venv/bin/python scripts/soak.py --concurrency 8 --duration 90 --kill-replica-every 30 \
        --stalled-clients 4 --output faults.json

A server with an API key: set ``DFASTLLM_API_KEY_FILE`` (or ``DFASTLLM_API_KEY``) in the environment.
Each client loops: one streamed completion (models taken in turn), read to ``[DONE]``. A 503
with Retry-After (the server shedding load) is counted as ``rejected``, not as an error.
"""

from __future__ import annotations

import argparse
import os
import json
import re
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import requests
import socket
from urllib.parse import urlsplit

PROMPTS = ["In the beginning", "And God said", "Recite Genesis 1:1.", "Why is the sky blue?",
           "The LORD is my shepherd", "Write one sentence about rivers."]
SERVE_PROCESS_MARKERS = ("ServeReplica:", "ProxyActor", "ServeController")


@dataclass
class Outcome:
    model: str
    status: int | None  # None: no HTTP response at all
    kind: str  # ok | rejected | http_error | stream_error | no_done | exception
    ttft_s: float | None = None
    e2e_s: float | None = None
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def one_request(session: requests.Session, url: str, model: str, prompt: str, max_tokens: int,
                headers: dict[str, str], timeout_s: float) -> Outcome:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    started = time.monotonic()
    try:
        with session.post(url + "/v1/completions", json=body, headers=headers, stream=True,
                          timeout=timeout_s) as response:
            if response.status_code != 200:
                kind = "rejected" if response.status_code == 503 and "Retry-After" in response.headers else "http_error"
                return Outcome(model, response.status_code, kind, detail=_error_code(response))
            ttft, done = None, False
            for line in response.iter_lines(decode_unicode=True):
                if not line:
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    detail = json.dumps({"code": error.get("code"), "message": error.get("message")})[:200]
                    return Outcome(model, 200, "stream_error", detail=detail)
                if ttft is None:
                    ttft = time.monotonic() - started
            if not done:
                return Outcome(model, 200, "no_done")
            return Outcome(model, 200, "ok", ttft, time.monotonic() - started)
    except (requests.RequestException, ValueError) as exc:
        return Outcome(model, None, "exception", detail=f"{type(exc).__name__}: {exc}"[:200])


def _error_code(response: requests.Response) -> str:
    """The OpenAI error code, or the start of a body that is not one (Ray's proxy answers in plain text)."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _code_of(detail: str) -> str:
    """The ``code`` of an error event's JSON (cut at 200 characters), else the detail's start."""
    found = re.search(r'"code": "([^"]+)"', detail)
    return found.group(1) if found else detail[:60]


def auth_headers() -> dict[str, str]:
    """The server's API key from ``DFASTLLM_API_KEY_FILE`` or ``DFASTLLM_API_KEY`` (never a command-line
    argument: those show in ``ps`` and shell history)."""
    path = os.environ.get("DFASTLLM_API_KEY_FILE")
    key = open(os.path.expanduser(path), encoding="utf-8").read().strip() if path else os.environ.get("DFASTLLM_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def client(args: argparse.Namespace, index: int, deadline: float, tally: Tally) -> None:
    headers = auth_headers()
    with requests.Session() as session:
        turn = index
        while time.monotonic() < deadline:
            model = args.models[turn % len(args.models)]
            tally.add(one_request(session, args.url, model, PROMPTS[turn % len(PROMPTS)], args.max_tokens,
                                  headers, args.request_timeout))
            turn += 1


def kill_replicas(args: argparse.Namespace, deadline: float, killed: list[dict[str, Any]]) -> None:
    """Every ``kill_replica_every`` seconds, kill one replica of ``--kill`` (model replicas, the routers
    (``Ingress``), or both), in turn."""
    import ray

    ray.init(address=args.ray_address, namespace="serve", logging_level="ERROR", log_to_driver=False)
    turn = 0
    while time.monotonic() + args.kill_replica_every < deadline:
        time.sleep(args.kill_replica_every)
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::")
                       and {"models": "#Ingress#" not in a["name"], "routers": "#Ingress#" in a["name"],
                            "both": True}[args.kill])
        if not names:
            continue
        name = names[turn % len(names)]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed.append({"t_s": round(time.monotonic() - (deadline - args.duration), 1), "replica": name})
        turn += 1


def stalled_client(args: argparse.Namespace, headers: dict[str, str], deadline: float) -> dict[str, Any]:
    """A streaming request whose client never reads: the server must neither hang nor hold it past
    ``request_timeout_s``; whether the connection was ended by the server by the deadline is reported."""
    url = urlsplit(args.url)
    body = json.dumps({"model": args.models[0], "prompt": PROMPTS[0], "max_tokens": args.max_tokens,
                       "stream": True}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection((url.hostname, url.port or 80))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server feels the stall
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
                 f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(max(0.0, deadline - time.monotonic()))
    sock.setblocking(False)
    received = b""
    try:  # what the server sent meanwhile, now read at once (it ends with [DONE] if the request ended)
        while chunk := sock.recv(1 << 20):
            received += chunk
    except BlockingIOError:
        pass
    sock.close()
    return {"bytes": len(received), "ended": b"data: [DONE]" in received}


def serve_processes() -> dict[int, str]:
    """pid → Ray actor name, for the Serve actors on this machine.

    Ray appends the running method to a worker's title (``ray::ProxyActor.receive_asgi_messages``);
    it is cut off so that a process keeps one name.
    """
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("ray::") and any(marker in title for marker in SERVE_PROCESS_MARKERS):
            found[proc.info["pid"]] = title.split()[0].split(".")[0]
    return found


def sample(url: str, started: float, headers: dict[str, str]) -> dict[str, Any]:
    rss = {}
    for pid, title in serve_processes().items():
        try:
            rss[f"{title} ({pid})"] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    codes: dict[str, int | None] = {}
    for probe in ("health", "ready"):
        try:
            codes[probe] = requests.get(f"{url}/{probe}", headers=headers, timeout=10).status_code  # /ready needs the key
        except requests.RequestException:
            codes[probe] = None
    return {"t_s": round(time.monotonic() - started, 1), **codes, "rss_mib": rss}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def summarize(args: argparse.Namespace, tally: Tally, samples: list[dict], elapsed: float) -> dict[str, Any]:
    outcomes = tally.outcomes
    ok = [o for o in outcomes if o.kind == "ok"]
    kinds = Counter(o.kind for o in outcomes)
    memory = {}
    for name in dict.fromkeys(name for s in samples for name in s["rss_mib"]):
        series = [s["rss_mib"][name] for s in samples if name in s["rss_mib"]]
        memory[name] = {"first_mib": series[0], "last_mib": series[-1], "max_mib": max(series),
                        "growth_mib": round(series[-1] - series[0], 1)}
    return {
        "config": vars(args),
        "elapsed_s": round(elapsed, 1),
        "requests": len(outcomes),
        "outcomes": dict(kinds),
        "errors": sum(n for kind, n in kinds.items() if kind not in ("ok", "rejected")),
        "per_model": {m: dict(Counter(o.kind for o in outcomes if o.model == m)) for m in args.models},
        "rejected": dict(Counter(f"{o.model}: {o.detail}" for o in outcomes if o.kind == "rejected")),
        "error_codes": dict(Counter(f"{o.model}: {_code_of(o.detail)}" for o in outcomes
                                    if o.kind not in ("ok", "rejected"))),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "ttft_s": {"p50": percentile([o.ttft_s for o in ok if o.ttft_s is not None], 0.5),
                   "p99": percentile([o.ttft_s for o in ok if o.ttft_s is not None], 0.99)},
        "e2e_s": {"p50": percentile([o.e2e_s for o in ok], 0.5), "p99": percentile([o.e2e_s for o in ok], 0.99),
                  "mean": round(statistics.fmean([o.e2e_s for o in ok]), 4) if ok else None},
        "hung": sum(o.kind == "no_done" or "Timeout" in o.detail for o in outcomes),
        "health_codes": dict(Counter(str(s["health"]) for s in samples)),
        "ready_codes": dict(Counter(str(s["ready"]) for s in samples)),
        "memory": memory,
        "error_examples": [asdict(o) for o in outcomes if o.kind not in ("ok", "rejected")][:10],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--models", default="tiny-mdlm,smollm2-135m", type=lambda s: s.split(","))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds new requests are started")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client read timeout, seconds")
    parser.add_argument("--sample-interval", type=float, default=5.0)
    parser.add_argument("--output", default="soak.json")
    parser.add_argument("--kill-replica-every", type=float, default=0.0,
                        help="seconds between model replica kills (0: none)")
    parser.add_argument("--ray-address", default="auto", help="the cluster to kill replicas in")
    parser.add_argument("--kill", choices=("models", "routers", "both"), default="models",
                        help="which replicas --kill-replica-every kills (routers: run two, router.num_replicas: 2)")
    parser.add_argument("--stalled-clients", type=int, default=0, help="clients that never read their stream")
    args = parser.parse_args()

    tally, samples = Tally(), []
    probe_headers = auth_headers()
    started = time.monotonic()
    deadline = started + args.duration
    threads = [threading.Thread(target=client, args=(args, i, deadline, tally), daemon=True)
               for i in range(args.concurrency)]
    samples.append(sample(args.url, started, probe_headers))
    killed: list[dict[str, Any]] = []
    if args.kill_replica_every > 0:
        threads.append(threading.Thread(target=kill_replicas, args=(args, deadline, killed), daemon=True))
    stalled: list[dict[str, Any]] = []
    stall_until = deadline + args.request_timeout
    threads += [threading.Thread(target=lambda: stalled.append(stalled_client(args, probe_headers, stall_until)),
                                 daemon=True) for _ in range(args.stalled_clients)]
    for thread in threads:
        thread.start()
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(args.sample_interval, left))
        samples.append(sample(args.url, started, probe_headers))
    for thread in threads:  # a client stuck past every timeout is reported, not waited for
        thread.join(max(0.0, deadline + args.request_timeout + 10 - time.monotonic()))
    samples.append(sample(args.url, started, probe_headers))
    hung = sum(thread.is_alive() for thread in threads)
    report = summarize(args, tally, samples, time.monotonic() - started)
    report["hung_clients"] = hung
    report["replicas_killed"] = killed
    report["stalled_clients"] = stalled
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    brief = {k: report[k] for k in ("elapsed_s", "requests", "outcomes", "rejected", "errors", "error_codes", "hung_clients",
                                    "replicas_killed", "stalled_clients",
                                    "requests_per_s", "ttft_s", "e2e_s", "hung", "health_codes", "ready_codes", "memory")}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
