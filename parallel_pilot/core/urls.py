"""Coordinator URLs as users write them: one (``normalize_server``: ``host:port`` means
``http://host:port``; anything that is not an http(s) URL is refused with how to write it)
or a farm's several (``split_servers``: a list, or URLs separated by commas)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from parallel_pilot.errors import InvalidInput

URL_SCHEMES = ("http", "https")
# "ftp:x", "http:/x": a scheme without "//" (a port after "host:" starts with a digit)
_SCHEME_WITHOUT_SLASHES = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!\d)(?!//)")


def normalize_server(url: str, *, source: str = "server") -> str:
    """``url`` as a coordinator base URL: ``scheme://host[:port][/path]`` without a
    trailing slash, scheme and host lower case; ``host:port`` without a scheme is taken
    as ``http://host:port``. Anything else raises ``InvalidInput`` naming ``source``."""
    text = url.strip()

    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"{source} {url!r}: {why}; write it as http://HOST:PORT "
                            f"(e.g. http://127.0.0.1:8330)")

    if not text:
        raise refuse("is empty")
    if any(ch.isspace() for ch in text):
        raise refuse("contains a space")
    if "://" not in text:
        if _SCHEME_WITHOUT_SLASHES.match(text):
            raise refuse("is not a URL")
        text = "http://" + text.removeprefix("//")
    parts = urlsplit(text)
    if parts.scheme.lower() not in URL_SCHEMES:
        raise refuse(f"a coordinator speaks http:// or https://, not {parts.scheme}://")
    if not parts.hostname:
        raise refuse("has no host")
    try:
        port = parts.port
    except ValueError:
        raise refuse("has a port that is not a number from 1 to 65535") from None
    if port == 0:
        raise refuse("has a port that is not a number from 1 to 65535")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise refuse("has a query or fragment")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def split_servers(servers: str | Sequence[str], *, source: str = "server") -> list[str]:
    """Coordinator URLs from ``servers`` (a list, or URLs separated by commas), each
    normalised (``normalize_server``), in order, without repeats; at least one."""
    given = [servers] if isinstance(servers, str) else list(servers)
    urls: list[str] = []
    for text in given:
        for part in text.split(","):
            url = normalize_server(part, source=source)
            if url not in urls:
                urls.append(url)
    if not urls:
        raise InvalidInput(f"{source}: no coordinator URL given")
    return urls


def normalize_servers(servers: str | Sequence[str], *, source: str = "server") -> str:
    """``split_servers`` as one string, the URLs separated by commas."""
    return ",".join(split_servers(servers, source=source))
