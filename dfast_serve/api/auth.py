"""The API key check: does an ``Authorization`` header carry ``Bearer <api_key>``?

The router holds only the key's SHA-256 (``key_digest``), never the key: the app builder hands it the
digest as a deployment argument, which Serve keeps in its controller's state.
"""

from __future__ import annotations

import hmac

from dfast_serve.config.server import key_digest

_OWS = " \t"  # HTTP's optional whitespace; str.strip() would also eat bytes 0x85 and 0xA0 of a UTF-8 key


def key_matches(authorization: str | None, digest: str) -> bool:
    """Whether ``authorization`` is ``Bearer <key>`` (scheme in any case) for the key whose ``key_digest``
    is ``digest``.

    ``authorization`` is the header as ASGI servers hand it over, its bytes decoded as latin-1;
    those bytes are hashed and compared with the digest of the key's UTF-8 bytes, so a non-ASCII key
    matches when the client sends it UTF-8 encoded. ``hmac.compare_digest`` on digests: the time taken
    does not depend on how much of the key was right. An empty token matches nothing.
    """
    if not digest or authorization is None:
        return False
    scheme, _, token = authorization.strip(_OWS).partition(" ")
    try:
        sent = token.strip(_OWS).encode("latin-1")
    except UnicodeEncodeError:  # not from an HTTP header
        return False
    return bool(sent) and hmac.compare_digest(key_digest(sent), digest) and scheme.lower() == "bearer"
