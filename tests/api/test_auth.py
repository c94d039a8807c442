"""API key matching on headers as Starlette decodes them from the raw request bytes."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from dfast_serve.api.auth import key_matches


def header(raw: bytes) -> str:
    """The Authorization header of a request that sent ``raw``, as the router reads it."""
    return Headers(raw=[(b"authorization", raw)])["authorization"]


KEY = "s3cret-key"


@pytest.mark.parametrize("raw", [b"Bearer s3cret-key", b"bearer s3cret-key", b"BEARER  s3cret-key \t"])
def test_the_key_matches_with_any_scheme_case_and_spacing(raw):
    assert key_matches(header(raw), KEY)


@pytest.mark.parametrize("raw", [b"", b"Bearer", b"Bearer ", b"s3cret-key", b"Basic s3cret-key",
                                 b"Bearer s3cret-ke", b"Bearer s3cret-key2", b"Bearer S3CRET-KEY"])
def test_anything_else_does_not(raw):
    assert not key_matches(header(raw), KEY)
    assert not key_matches(None, KEY)


@pytest.mark.parametrize("key", ["cl\u00e9-\u00fc-\U0001f511", "\u00e0", "\u6f22\u5b57"])
def test_a_non_ascii_key_matches_when_sent_as_utf8(key):
    # "\u00e0" is C3 A0 in UTF-8: latin-1 decoding ends the header in \xa0, which str.strip() would eat.
    assert key_matches(header(b"Bearer " + key.encode("utf-8")), key)
    assert not key_matches(header(b"Bearer " + key.encode("utf-8")[:-1]), key)


def test_an_empty_key_matches_nothing():
    assert not key_matches(header(b"Bearer "), "")
    assert not key_matches(header(b"Bearer"), "")
