"""Which casavi account the sync talks to: the one name everything it remembers is kept under.

One key/secret pair opens one whole casavi account (docs/casavi-api.md, "Authentication"), so the API
key identifies the account. What the sync remembers — snapshots, journals, the shared listing, pending
deletions and approvals, the learned request rate — belongs to that account, and a run pointed at
another account (a customer's test account first, then production) must neither use nor touch it.

The identity is a hash of the key: never the secret, and never the key itself in a file name, a table
or a log line. The base URL is not part of it: casavi may be reached under another host name without
becoming another account. A rotated key is met like a new account: its first run adopts by reads alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Hex digits of the account's id: 64 bits, no collision among a deployment's handful of accounts.
_ID_LENGTH = 16
#: Folder (in CASAVI_SNAPSHOT_DB) and name prefix (in the state database) of one account's state.
PREFIX = "account-"


def account_id(api_key: str) -> str:
    """The account's id: a hash of its API key (stripped), 16 hex digits. The key cannot be read from it."""
    digest = hashlib.sha256(f"casavi_pipeline/account\n{api_key.strip()}".encode()).hexdigest()
    return digest[:_ID_LENGTH]


def folder(state_directory: Path, account: str) -> Path:
    """The account's folder in CASAVI_SNAPSHOT_DB: its snapshots, listing, budget."""
    return Path(state_directory) / f"{PREFIX}{account}"


def label(account: str) -> str:
    """How messages name an account: its id, which a person compares with `casavi-pipeline` output."""
    return f"casavi account {account}"


def is_account_id(value: str) -> bool:
    return len(value) == _ID_LENGTH and all(c in "0123456789abcdef" for c in value)
