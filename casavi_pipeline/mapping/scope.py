"""What is in scope: the sync rule (rule 2 of `docs/export-format.md`), the one piece of domain vocabulary
the mapping, the guards and the settings share. Where it is applied: `mapping/people.py` (`person_rows`)."""

from __future__ import annotations

from enum import StrEnum


class SyncRule(StrEnum):
    """Which tenants, and with them which objects, are synced."""

    EMAIL = "email"  # tenants with a valid email; all real estate and all owners
    LAST_NAME = "last-name"  # Aareon Connect's rule since 2024-02-07: tenants by name, only linked objects
