"""API key matching on headers as Starlette decodes them from the raw request bytes."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from dfast_serve.api.auth import key_matches
from dfast_serve.config.server import key_digest


def header(raw: bytes) -> str:
    """The Authorization header of a request that sent ``raw``, as the router reads it."""
    return Headers(raw=[(b"authorization", raw)])["authorization"]


KEY = "s3cret-key"
DIGEST = key_digest(KEY)  # the router holds only this


@pytest.mark.parametrize("raw", [b"Bearer s3cret-key", b"bearer s3cret-key", b"BEARER  s3cret-key \t"])
def test_the_key_matches_with_any_scheme_case_and_spacing(raw):
    assert key_matches(header(raw), DIGEST)


@pytest.mark.parametrize("raw", [b"", b"Bearer", b"Bearer ", b"s3cret-key", b"Basic s3cret-key",
                                 b"Bearer s3cret-ke", b"Bearer s3cret-key2", b"Bearer S3CRET-KEY"])
def test_anything_else_does_not(raw):
    assert not key_matches(header(raw), DIGEST)
    assert not key_matches(None, DIGEST)


@pytest.mark.parametrize("key", ["cl\u00e9-\u00fc-\U0001f511", "\u00e0", "\u6f22\u5b57"])
def test_a_non_ascii_key_matches_when_sent_as_utf8(key):
    # "\u00e0" is C3 A0 in UTF-8: latin-1 decoding ends the header in \xa0, which str.strip() would eat.
    assert key_matches(header(b"Bearer " + key.encode("utf-8")), key_digest(key))
    assert not key_matches(header(b"Bearer " + key.encode("utf-8")[:-1]), key_digest(key))


def test_an_empty_key_matches_nothing():
    assert not key_matches(header(b"Bearer "), "")
    assert not key_matches(header(b"Bearer"), "")
    assert not key_matches(header(b"Bearer "), key_digest(""))  # an empty token, even against the empty key's digest


def test_the_digest_is_the_sha256_of_the_keys_utf8_bytes():
    # `printf %s 's3cret-key' | sha256sum`, as docs/configuration.md tells users to make api_key_sha256
    assert DIGEST == "817b823905cc7853f381992575a9041fcdb17fc70e776707abfb4d7c59ecbf3f" == key_digest(KEY.encode())
