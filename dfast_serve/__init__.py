"""dfast_serve: diffusion and AR language models behind an OpenAI-compatible API, built for TTFT."""

from importlib import metadata

try:
    __version__ = metadata.version("dfast_serve")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
