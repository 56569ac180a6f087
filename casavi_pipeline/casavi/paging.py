"""casavi's listings page by page: the first request sends only the page size, every later page is the
`_links.next` URL exactly as casavi gave it [read], until there is none.

A next link must stay on the configured host and scheme: the token is never sent anywhere else. (casavi
may be reached under another host name: `check-casavi` reports the host a next link names, so the
operator can set CASAVI_BASE_URL to it.) A link elsewhere is refused when the next page is asked for, not
before the page carrying it is handed over: the check reads first pages only, and reports it.
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
    #: the next page's URL as casavi gave it (resolved against the base URL); followed only when it is on
    #: the configured casavi (`on_origin`)
    next_url: str | None


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
        target = _resolved(link, base) if link else None
        yield Page(objects, tuple(body), tuple(links), str(target) if target is not None else None)
        url = same_origin(target, base, call=call) if link else None
        query = None  # the next link carries its own query


def _resolved(link: Any, base: httpx.URL) -> httpx.URL | None:
    try:
        return base.join(link) if isinstance(link, str) else None
    except (httpx.InvalidURL, ValueError):
        return None


def on_origin(url: str, base: httpx.URL) -> bool:
    """Whether a URL points at the configured casavi (scheme, host and port)."""
    target = httpx.URL(url)
    return (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)


def same_origin(target: httpx.URL | None, base: httpx.URL, *, call: str) -> str:
    """The next-page link, if it points at the configured casavi; else `ForeignNextLink`, sending nothing."""
    if target is None or not on_origin(str(target), base):
        host = (target.host if target is not None else "") or "?"
        raise ForeignNextLink(
            f"casavi's next-page link leaves {base.host} (to {host}); refusing to send the token there: "
            "run `casavi-pipeline check-casavi`",
            call=call,
            host=host,
        )
    return str(target)
