"""Run the casavi sandbox: `python -m casavi_sandbox --port 8765 --db data/sandbox.sqlite3`.

Credentials come from CASAVI_API_KEY / CASAVI_API_SECRET; without them the sandbox accepts the fixed
local pair `sandbox-key` / `sandbox-secret` (a fake for a local process, not a secret) and says so.
CASAVI_SANDBOX_NONCE (set by `SandboxProcess`) is served by `/_sandbox/health`, so the starter knows
that the answers come from this process and not from another program on the port.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from casavi_sandbox.app import create_app
from casavi_sandbox.chaos import Controls, Knobs
from casavi_sandbox.process import DEFAULT_KEY, DEFAULT_SECRET, NONCE_ENV
from casavi_sandbox.store import SandboxStore

DEFAULT_DB = Path("data") / "sandbox.sqlite3"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m casavi_sandbox",
        description="A local stand-in for the casavi API v2, with knobs to make it misbehave.",
        epilog=(
            "Credentials: POST /v2/authenticate accepts the key and secret in CASAVI_API_KEY and "
            "CASAVI_API_SECRET; with either unset, the fixed local pair "
            f"{DEFAULT_KEY!r} / {DEFAULT_SECRET!r} (a fake for a local process, not a secret). "
            "The admin endpoints under /_sandbox/ (state, seed, config, ...) take none."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file (default: %(default)s)")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per minute (default: off)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API answer")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 500")
    parser.add_argument(
        "--token-ttl", type=float, default=None, help="token lifetime in seconds (default 30 days)"
    )
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="fraction of answers dropped (socket closed)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random 500s and drops")
    parser.add_argument(
        "--drop-field", default=None, help="API writes silently lose this field, e.g. units.rooms"
    )
    parser.add_argument(
        "--rename-field",
        default=None,
        help="API writes store this field under another name, e.g. units.rooms=roomCount",
    )
    parser.add_argument(
        "--echo-errors",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="400/409/422 answers to PUTs quote the submitted values and body, and carry values as codes",
    )
    parser.add_argument(
        "--reject-ids",
        default=None,
        help="PUTs of these reference ids (comma-separated) are answered 400, e.g. 0001-00042",
    )
    parser.add_argument(
        "--unmanaged-fields",
        default=None,
        help="every read also carries these fields the sync does not manage, e.g. images,customFields",
    )
    parser.add_argument(
        "--omit-app-link",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reads carry no appLink (a casavi that returns none; by default every object read has one)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="one log line per request"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        knobs = Knobs().updated(
            {
                "rate_limit": args.rate_limit,
                "latency_ms": args.latency_ms,
                "error_rate": args.error_rate,
                "token_ttl": args.token_ttl,
                "drop_rate": args.drop_rate,
                "seed": args.seed,
                "drop_field": args.drop_field,
                "rename_field": args.rename_field,
                "echo_errors": args.echo_errors,
                "reject_ids": args.reject_ids,
                "unmanaged_fields": args.unmanaged_fields,
                "omit_app_link": args.omit_app_link,
            }
        )
    except ValueError as exc:
        sys.exit(f"casavi sandbox: {exc}")
    api_key, api_secret = os.environ.get("CASAVI_API_KEY"), os.environ.get("CASAVI_API_SECRET")
    if not (api_key and api_secret):
        api_key, api_secret = DEFAULT_KEY, DEFAULT_SECRET
        print(
            f"casavi sandbox: CASAVI_API_KEY/CASAVI_API_SECRET not set, accepting the local pair "
            f"{DEFAULT_KEY} / {DEFAULT_SECRET}",
            file=sys.stderr,
        )
    store = SandboxStore(args.db)
    print(f"casavi sandbox: database {args.db.resolve()}", file=sys.stderr)
    nonce = os.environ.get(NONCE_ENV, "")
    app = create_app(store, Controls(knobs), api_key, api_secret, nonce)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=3,  # idle keep-alive connections must not hold up a restart
    )


if __name__ == "__main__":
    main()
