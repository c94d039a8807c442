"""The API key check: does an ``Authorization`` header carry ``Bearer <api_key>``?"""

from __future__ import annotations

import hmac

_OWS = " \t"  # HTTP's optional whitespace; str.strip() would also eat bytes 0x85 and 0xA0 of a UTF-8 key


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether ``authorization`` is ``Bearer <key>`` (scheme in any case).

    ``authorization`` is the header as ASGI servers hand it over, its bytes decoded as latin-1;
    those bytes are compared with the key's UTF-8 bytes, so a non-ASCII key matches when the
    client sends it UTF-8 encoded. ``hmac.compare_digest``: the time taken does not depend on how
    much of the key was right. An empty key matches nothing.
    """
    if not key or authorization is None:
        return False
    scheme, _, token = authorization.strip(_OWS).partition(" ")
    try:
        sent = token.strip(_OWS).encode("latin-1")
    except UnicodeEncodeError:  # not from an HTTP header
        return False
    return hmac.compare_digest(sent, key.encode("utf-8")) and scheme.lower() == "bearer"
