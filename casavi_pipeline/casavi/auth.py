"""casavi's token login as an `httpx.Auth` flow (dlt's REST client keeps auth apart the same way).

`POST /v2/authenticate` with the key and secret answers a token and its `expiresAt` [confirmed]; every
other call sends it in the header `token`. The flow logs in when there is no token or it is about to
expire (on the injected wall clock), sends the request, and on a `401` logs in once more and repeats it.

Credentials are never sprayed: a key/secret refused at login, or a fresh token refused again, is
latched — every thread and every later call of this client fails at once without sending anything. One
login at a time; the other threads wait for its token. A login answered 429 or 5xx is handed back as the
answer, and the client's retry policy tries again (the login counts against the account's budget like
every request: it passes the same transport).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Generator

import httpx

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.classify import Call, Outcome, classify
from casavi_pipeline.casavi.errors import (
    MODEL_MISMATCH_WORDING,
    CasaviAuthError,
    CasaviError,
    CasaviModelMismatchError,
    error_from,
    json_body,
)
from casavi_pipeline.casavi.transport import CALL

LOGIN_CALL = f"POST {api.AUTH_PATH}"
#: The request extension naming the reference id a call is about (for the latched error).
REF_ID = "casavi_ref_id"
#: A token whose answer names no expiry is renewed after this long.
_DEFAULT_LIFETIME = 3600.0


class TokenAuth(httpx.Auth):
    """The token flow of one client; `now` is the wall clock (`expiresAt` is a UTC time)."""

    def __init__(
        self, base_url: str, key: str, secret: str, *, on_login: Callable[[], None], now: Callable[[], float] = time.time
    ) -> None:
        self._url = httpx.URL(base_url.rstrip("/") + api.AUTH_PATH)
        self._key, self._secret = key, secret
        self._on_login = on_login
        self._now = now
        self._lock = threading.Lock()
        self._latch_lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._latched: CasaviAuthError | None = None

    def __repr__(self) -> str:  # never the key, secret or token
        return "TokenAuth()"

    # --- the flow around every call ------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for attempt in range(2):
            token = yield from self._token_flow(force=False)
            if token is None:
                return  # the login was answered 429/5xx: that answer is the call's, and is retried
            request.headers[api.TOKEN_HEADER] = token
            response = yield request
            if response.status_code != api.STATUS_UNAUTHORIZED:
                return
            if attempt == 0:  # expired or revoked: one fresh token
                self._forget(token)
        response.read()
        raise self._latch(  # a token casavi just issued is refused too: the access is gone for this client
            error_from(
                response,
                CasaviAuthError,
                call=str(request.extensions.get(CALL, request.method)),
                ref_id=request.extensions.get(REF_ID),
                message=f"{api.error_wording(api.STATUS_UNAUTHORIZED)} (a fresh token too)",
            )
        )

    def _token_flow(self, *, force: bool) -> Generator[httpx.Request, httpx.Response, str | None]:
        with self._lock:
            with self._latch_lock:
                latched = self._latched
            if latched is not None:
                raise latched.copy()
            if not force and self._token is not None and self._now() < self._refresh_at:
                return self._token
            self._on_login()
            response = yield self._login_request()
            response.read()
            return self._take(response)

    # --- a login on its own (the client's `authenticate`) --------------------------------------------
    def login(self, send: Callable[[httpx.Request], httpx.Response], *, force: bool) -> httpx.Response | None:
        """Log in through `send` unless a valid token is there (and not `force`); the login's answer."""
        flow = self._token_flow(force=force)
        try:
            request = next(flow)
        except StopIteration:
            return None  # a valid token is proof enough
        response = send(request)
        with contextlib.suppress(StopIteration):
            flow.send(response)
        return response

    # --- the token -----------------------------------------------------------------------------------
    def _login_request(self) -> httpx.Request:
        body = {api.AUTH_KEY_FIELD: self._key, api.AUTH_SECRET_FIELD: self._secret}
        return httpx.Request("POST", self._url, json=body, extensions={CALL: LOGIN_CALL})

    def _take(self, response: httpx.Response) -> str | None:
        """The token of a login's answer; None when casavi asked to try later (429, 5xx)."""
        outcome = classify(Call.LOGIN, response.status_code)
        if outcome is Outcome.RETRY:
            return None
        if outcome is Outcome.REFUSED:
            # A wrong key/secret stays wrong for the rest of the run: trying again from every thread and
            # every call would only spray failed logins at casavi (and maybe lock the account).
            raise self._latch(
                error_from(response, CasaviAuthError, call=LOGIN_CALL, ref_id=None,
                           message="casavi refused the API key/secret; check CASAVI_API_KEY and CASAVI_API_SECRET")
            )  # fmt: skip
        if outcome is Outcome.MISMATCH:
            raise error_from(
                response, CasaviModelMismatchError, call=LOGIN_CALL, ref_id=None, message=MODEL_MISMATCH_WORDING
            )
        if outcome is not Outcome.DONE:
            raise error_from(response, CasaviError, call=LOGIN_CALL, ref_id=None)
        answer = json_body(response, call=LOGIN_CALL)
        token = answer.get(api.AUTH_TOKEN_FIELD) if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise CasaviError("casavi's authentication answer carries no token", call=LOGIN_CALL, status=200)
        now = self._now()
        try:
            expires = dt.datetime.fromisoformat(answer[api.AUTH_EXPIRES_FIELD].replace("Z", "+00:00")).timestamp()
        except (KeyError, TypeError, ValueError, AttributeError):
            expires = now + _DEFAULT_LIFETIME
        # Renew shortly before casavi would refuse the token: 5 minutes, or a tenth of a short lifetime.
        self._token, self._refresh_at = token, expires - min(300.0, max(0.0, expires - now) / 10.0)
        return token

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:  # another thread may have renewed it already
                self._token = None

    def _latch(self, error: CasaviAuthError) -> CasaviAuthError:
        with self._latch_lock:  # not `_lock`: a refused login latches while its thread holds that one
            if self._latched is None:
                self._latched = error
        return error
