"""casavi's listings page by page: the first request sends only the page size, every later page is the
`_links.next` URL exactly as casavi gave it [read], until there is none.

A next link must stay on the configured host and scheme: the token is never sent anywhere else. (casavi
may be reached under another host name: `check-casavi` reports the host a next link names, so the
operator can set CASAVI_BASE_URL to it.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.errors import CasaviError


@dataclass(frozen=True)
class Page:
    """One page of a listing: its objects and the envelope's field names (never its values)."""

    objects: list[dict[str, Any]]
    envelope: tuple[str, ...]  # the body's keys, e.g. ("list", "_links")
    links: tuple[str, ...]  # the keys of `_links`, e.g. ("next",)
    next_url: str | None  # the next page, checked to stay on the configured casavi


class ForeignNextLink(CasaviError):
    """casavi's next-page link leaves the configured host; `host` names where it points."""

    def __init__(self, message: str, *, call: str, host: str) -> None:
        super().__init__(message, call=call)
        self.host = host

    def copy(self) -> ForeignNextLink:
        return ForeignNextLink(self.message, call=self.call or "", host=self.host)


def pages(
    fetch: Callable[[str, dict[str, Any] | None], Any], first: str, params: dict[str, Any], *, base: httpx.URL, call: str
) -> Iterator[Page]:
    """The pages of a listing, fetched (`fetch(url, params)` → the JSON body) as the caller asks for the next."""
    url: str | None = first
    query: dict[str, Any] | None = params
    while url:
        body = fetch(url, query)
        objects = body.get(api.LIST_KEY) if isinstance(body, dict) else None
        if not isinstance(objects, list):
            raise CasaviError("casavi answered a listing without its list", call=call, status=200)
        links = body.get(api.LINKS_KEY)
        links = links if isinstance(links, dict) else {}
        link = links.get(api.NEXT_LINK_KEY)
        url = same_origin(link, base, call=call) if link else None
        yield Page(objects, tuple(body), tuple(links), url)
        query = None  # the next link carries its own query


def same_origin(link: Any, base: httpx.URL, *, call: str) -> str:
    """The next-page link, if it points at the configured casavi; else `ForeignNextLink`, sending nothing."""
    try:
        target = base.join(link) if isinstance(link, str) else None
    except (httpx.InvalidURL, ValueError):
        target = None
    if target is None or (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
        host = (target.host if target is not None else "") or "?"
        raise ForeignNextLink(
            f"casavi's next-page link leaves {base.host} (to {host}); refusing to send the token there",
            call=call,
            host=host,
        )
    return str(target)
