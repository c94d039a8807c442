"""Work in pieces: a computation written as a generator that yields between pieces of its work, so that a
caller may run other work between them (the diffusion engine runs a long forward pass a piece per step,
``engine/masked/family.py``). ``drive`` runs one through to its result, for callers that want it whole."""

from __future__ import annotations

from typing import Generator, TypeVar

T = TypeVar("T")
Pieces = Generator[None, None, T]  # yields between pieces; returns the result


def drive(pieces: Pieces[T]) -> T:
    """Run ``pieces`` to the end; its result."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value
