"""Serve config files with overrides: run a shipped config where some values cannot apply.

``serve_config.cluster.yaml`` is written for an A100 pool; a laptop, a CI runner or a staging
cluster may lack what it names (port 8000, 8 CPUs per replica, the ``A100-40G`` label, the API key
file). Rather than copying the file, name each difference:

    python -m dfast_serve.serve.config_file serve_config.cluster.yaml \\
        --set http_options.host=127.0.0.1 \\
        --set applications.dfast_serve.args.models.tiny-mdlm.replica.num_cpus=1 \\
        > /tmp/serve_config.local.yaml && serve run /tmp/serve_config.local.yaml

A path is dot-separated keys; in a list a segment is an index or the ``name`` of an element
(applications, models). The value is parsed as YAML (``1`` is a number, ``null`` is None, ``"1"``
a string). Overrides apply in order, so rename an application last. The test of the cluster config (tests/serve/test_cluster_config.py) uses the same
function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml


def _child(node: Any, key: str, path: str) -> tuple[Any, Any]:
    """The container's key or index for one path segment."""
    if isinstance(node, list):
        if key.isdigit() and int(key) < len(node):
            return node, int(key)
        for index, item in enumerate(node):
            if isinstance(item, dict) and item.get("name") == key:
                return node, index
        raise KeyError(f"{path}: no element {key!r} (an index, or the name of an element)")
    if isinstance(node, dict):
        return node, key
    raise KeyError(f"{path}: cannot descend into {type(node).__name__} at {key!r}")


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set one value; intermediate mappings are created, list elements must exist."""
    keys = dotted.split(".")
    node: Any = config
    for depth, key in enumerate(keys[:-1]):
        container, slot = _child(node, key, ".".join(keys[: depth + 1]))
        if isinstance(container, dict) and not isinstance(container.get(slot), (dict, list)):
            container[slot] = {}
        node = container[slot]
    container, slot = _child(node, keys[-1], dotted)
    container[slot] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` (value in YAML) as ``("a.b.c", value)``."""
    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise ValueError(f"override {text!r} is not PATH=VALUE")
    return path.strip(), yaml.safe_load(raw)


def load_serve_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A Serve config file (``serve run``/``serve deploy`` format) with ``PATH=VALUE`` overrides applied."""
    config = yaml.safe_load(Path(path).read_text())
    for text in overrides:
        set_path(config, *parse_override(text))
    return config


def application(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """One application of a Serve config: the named one, or the only one."""
    apps = config["applications"]
    if name is None:
        if len(apps) != 1:
            raise ValueError(f"the config has {len(apps)} applications: name one")
        return apps[0]
    for app in apps:
        if app.get("name") == name:
            return app
    raise KeyError(f"no application named {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a Serve config file, e.g. serve_config.cluster.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = parser.parse_args(argv)
    yaml.safe_dump(load_serve_config(args.config, args.overrides), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
