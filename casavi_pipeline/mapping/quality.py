"""Data-quality checks of the casavi frames, as pure functions (Dagster wiring: `defs/quality.py`).

Each check returns a `CheckOutcome`: passed, severity, counts, the offending reference IDs or ERP keys
(at most `MAX_LISTED`) and a one-line reason that says what to fix. Outcomes never carry names,
emails or other values of people: only reference IDs, ERP key numbers, counts and, where it is what a
person must fix, a building's street (the housing company's address).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd

from casavi_pipeline.erp.contract import ENTITIES_BY_NAME, FOREIGN_KEYS
from casavi_pipeline.mapping.email import is_valid_email
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.mapping.people import VALID_EMAIL_COLUMN, tenant_rows_synced, with_valid_email
from casavi_pipeline.mapping.scope import SyncRule

MAX_LISTED = 50

ForeignKey = tuple[str, tuple[str, ...], str, tuple[str, ...]]


class Severity(StrEnum):
    ERROR = "ERROR"  # blocking: casavi would reject the data, or it breaks a sync rule
    WARN = "WARN"  # informational: the sync goes on


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    severity: Severity
    reason: str  # one line, e.g. "3 units reference a missing building (first: ...); fix ..."
    counts: dict[str, int] = field(default_factory=dict)
    ids: tuple[str, ...] = ()  # offending reference IDs / ERP keys, at most MAX_LISTED
    details: tuple[str, ...] = ()  # short lines per offender (IDs, keys, field names), at most MAX_LISTED


def _outcome(
    problems: Sequence[str],
    severity: Severity,
    *,
    ok: str,
    failed: str,
    counts: dict[str, int],
    details: Sequence[str] = (),
) -> CheckOutcome:
    """Passed when `problems` is empty. `failed` is a static template with {n} (offenders) and {first}
    (the first detail line, else the first offender), so data never becomes part of a format string."""
    unique = list(dict.fromkeys(problems))
    if not unique:
        return CheckOutcome(True, severity, ok, counts)
    reason = failed.format(n=len(unique), first=details[0] if details else unique[0])
    return CheckOutcome(
        False, severity, reason, counts, tuple(unique[:MAX_LISTED]), tuple(details[:MAX_LISTED])
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- unique composite IDs ---------------------------------------------------------------------------
def free_separators(reference_ids: Iterable[str], current: str) -> list[str]:
    """Allowed separators that occur in none of the IDs (so in no ERP number): switching is collision-free."""
    used = set("".join(reference_ids))
    return [s for s in ALLOWED_SEPARATORS if s != current and s not in used]


def unique_ids(
    noun: str, frame: pd.DataFrame, separator: str, *, singular: str | None = None
) -> CheckOutcome:
    """No two ERP records compose to the same ID (rule 3); names both records and a free separator."""
    singular = singular or noun[:-1]
    duplicated = frame[frame["id"].duplicated(keep=False)]
    groups = duplicated.groupby("id", sort=True)["erp_key"].agg(lambda keys: " | ".join(sorted(keys)))
    details = [f"{ref_id} ← {keys}" for ref_id, keys in groups.items()]
    free = free_separators(frame["id"], separator)
    hint = f"an ERP number contains the separator {separator!r}: set CASAVI_ID_SEPARATOR to " + (
        " or ".join(repr(s) for s in free) if free else "… (none is free: renumber the ERP records)"
    )
    return _outcome(
        list(groups.index),
        Severity.ERROR,
        ok=f"all {len(frame)} {noun} have unique IDs",
        failed=f"{{n}} {singular} IDs are composed by more than one ERP record (first: {{first}}); {hint}",
        counts={"rows": len(frame), "duplicated_ids": len(groups), "rows_affected": len(duplicated)},
        details=details,
    )


# --- unique streets within a property (a building is identified by its street) --------------------
def unique_streets(addresses: pd.DataFrame) -> CheckOutcome:
    """No two buildings of one economic unit have the same street and house number (rule 3): casavi
    keeps one address per street, so the second building would silently merge into the first."""
    keyed = addresses.assign(street=addresses["street"].fillna(""))
    duplicated = keyed[keyed.duplicated(["property_id", "street"], keep=False)]
    groups = duplicated.groupby(["property_id", "street"], sort=True)["erp_key"].agg(
        lambda keys: " and ".join(sorted(keys))
    )
    # Named by property id, the buildings' ERP keys and the street they share: a street is the housing
    # company's address (its building), not a person's, and it is what a person fixes in gebaeude.csv.
    details = [
        f"{property_id}: {keys} share the street {street!r}" if street else f"{property_id}: {keys} have no street"
        for (property_id, street), keys in groups.items()
    ]
    return _outcome(
        details,
        Severity.ERROR,
        ok=f"all {_plural(len(addresses), 'building')} have a street of their own within their property",
        failed="{n} economic units have buildings with the same street and house number (first: {first}); "
        "casavi identifies a building by its street within the property: fix strasse/hausnummer in "
        "gebaeude.csv (or merge the buildings)",
        counts={
            "buildings": len(addresses),
            "street_collisions": len(groups),
            "buildings_affected": len(duplicated),
        },
        details=details,
    )


# --- referential integrity (casavi side) ------------------------------------------------------------
def unit_references(units: pd.DataFrame, properties: pd.DataFrame) -> CheckOutcome:
    """Every unit's property exists, and its address is one of that property's streets (else 422)."""
    property_ids = set(properties["id"])
    streets = {
        (prop, address["street"])
        for prop, address_list in zip(properties["id"], properties["addresses"], strict=True)
        for address in address_list
    }
    no_property = [u for u, p in zip(units["id"], units["property_id"], strict=True) if p not in property_ids]
    no_address = [
        u
        for u, p, a in zip(units["id"], units["property_id"], units["address"], strict=True)
        if p in property_ids and (p, a) not in streets
    ]
    return _outcome(
        no_property + no_address,
        Severity.ERROR,
        ok=f"all {_plural(len(units), 'unit')} reference an existing property and one of its addresses",
        failed="{n} units reference a missing property or building address (first: {first}); "
        "fix verwaltungseinheiten.csv, gebaeude.csv or wirtschaftseinheiten.csv",
        counts={
            "units": len(units),
            "missing_property": len(no_property),
            "missing_address": len(no_address),
        },
    )


def contract_references(contracts: pd.DataFrame, units: pd.DataFrame) -> CheckOutcome:
    """Every contract's unit exists and belongs to the contract's property (else casavi answers 422)."""
    property_of = dict(zip(units["id"], units["property_id"], strict=True))
    missing, elsewhere = [], []
    for key, unit, prop in zip(
        contracts["erp_key"], contracts["unit_id"], contracts["property_id"], strict=True
    ):
        if unit not in property_of:
            missing.append(key)
        elif property_of[unit] != prop:
            elsewhere.append(key)
    return _outcome(
        missing + elsewhere,
        Severity.ERROR,
        ok=f"all {_plural(len(contracts), 'contract')} reference an existing unit of their property",
        failed="{n} contracts reference a missing unit (first: {first}); fix mietvertraege.csv, "
        "eigentuemervertraege.csv or verwaltungseinheiten.csv",
        counts={
            "contracts": len(contracts),
            "missing_unit": len(missing),
            "unit_of_other_property": len(elsewhere),
        },
        details=[f"{key}: unit missing" for key in missing]
        + [f"{key}: unit of another property" for key in elsewhere],
    )


# --- referential integrity (ERP side) ---------------------------------------------------------------
def erp_key_label(entity: str, frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """`entity col=value col=value` per row: the ERP record named by its numbers only."""
    label = pd.Series(entity, index=frame.index, dtype=object)
    for column in columns:
        label = label + f" {column}=" + frame[column].astype(str)
    return label


def erp_foreign_keys(
    frames: Mapping[str, pd.DataFrame], foreign_keys: Iterable[ForeignKey] = FOREIGN_KEYS
) -> CheckOutcome:
    """Every ERP foreign key resolves (ve→geb, vertrag→ve, mieter→vertrag, …); dangling rows listed."""
    dangling: list[str] = []
    details: list[str] = []
    counts: dict[str, int] = {}
    checked = []
    for child, child_columns, parent, parent_columns in foreign_keys:
        child_frame, parent_frame = frames[child], frames[parent]
        present = pd.MultiIndex.from_frame(parent_frame[list(parent_columns)])
        resolves = pd.MultiIndex.from_frame(child_frame[list(child_columns)]).isin(present)
        orphans = child_frame[~resolves]
        key = f"{child}→{parent}"
        checked.append(key)
        counts[key] = len(orphans)
        if len(orphans):
            child_keys = erp_key_label(child, orphans, ENTITIES_BY_NAME[child].key)
            wanted = orphans[list(child_columns)].set_axis(list(parent_columns), axis=1)
            targets = erp_key_label(parent, wanted, parent_columns)
            dangling += list(child_keys)
            details += [f"{c} → missing {t}" for c, t in zip(child_keys, targets, strict=True)]
    files = sorted({f"{child}.csv" for child, *_ in foreign_keys})
    return _outcome(
        dangling,
        Severity.ERROR,
        ok=f"all ERP foreign keys resolve ({', '.join(checked)})",
        failed="{n} ERP rows reference a missing record (first: {first}); "
        f"fix {' or '.join(files)} or the file of the missing record",
        counts=counts,
        details=details,
    )


# --- persons with differing rows (rule 5) ------------------------------------------------------------
#: A person's rows differing across their contracts is everyday ERP data (a phone updated on one lease
#: only); more than this share of a Mandant's contacts looks like a broken export, and warns.
CONFLICTING_PERSONS_WARN_SHARE = 0.05


def conflicting_person_rows(
    conflicting_ids: Sequence[str], contacts: int, *, warn_share: float = CONFLICTING_PERSONS_WARN_SHARE
) -> CheckOutcome:
    """How many persons have differing rows across contracts (the latest contract's row was synced).

    Like the email rule's count: passes with the counts and the ids (so the ERP can be cleaned up), and
    warns only when the share of contacts affected exceeds `warn_share`.
    """
    ids = list(dict.fromkeys(conflicting_ids))
    share = len(ids) / contacts if contacts else 0.0
    counts = {"contacts": contacts, "persons_with_conflicts": len(ids)}
    summary = (
        f"{len(ids)} of {contacts} persons ({share:.0%}) have differing rows across contracts; the row of "
        "the contract with the latest beginn was synced"
    )
    if share <= warn_share:
        return CheckOutcome(True, Severity.WARN, summary, counts, tuple(ids[:MAX_LISTED]))
    return _outcome(
        ids,
        Severity.WARN,
        ok=summary,
        failed=f"{summary}; that is more than the usual {warn_share:.0%} (first: {{first}}): align the ERP "
        "records of each person",
        counts=counts,
    )


# --- the sync rule (rule 2) ------------------------------------------------------------------------
def email_rule(
    contracts: pd.DataFrame, contacts: pd.DataFrame, renter_type: str, *, rule: SyncRule = SyncRule.EMAIL
) -> CheckOutcome:
    """Every contact that carries a rental contract passes the sync rule, after the mapping (a safety net).

    `email`: a valid email. `last-name`: a last name or company name; an email is not required, and the
    reason counts the tenants casavi reaches by post instead.
    """
    renter = contracts[contracts["contract_type"] == renter_type]
    tenant_ids = set(renter["contact_id"])
    emails = dict(zip(contacts["id"], contacts["email"], strict=True))
    without_email = sorted(c for c in tenant_ids if not is_valid_email(emails.get(c)))
    # contracts, not entries: a contract with two tenants is one entry in each tenant's contact
    rental_contracts = _plural(renter["number"].nunique(), "rental contract")
    counts = {"rental_contracts": int(renter["number"].nunique())}
    if rule is SyncRule.EMAIL:
        return _outcome(
            without_email,
            Severity.ERROR,
            ok=f"sync rule email: all {rental_contracts} belong to tenants with a valid email",
            failed="sync rule email: {n} contacts carry a rental contract without a valid email (first: "
            "{first}); the mapping must drop such tenants — report this as a bug",
            counts={**counts, "tenants_failing": len(without_email)},
            details=[f"{c}: tenant without valid email" for c in without_email],
        )
    named = contacts["last_name"].notna() | contacts["company_name"].notna()
    has_name = dict(zip(contacts["id"], named, strict=True))
    unnamed = sorted(c for c in tenant_ids if not has_name.get(c))
    return _outcome(
        unnamed,
        Severity.ERROR,
        ok=f"sync rule last-name: all {rental_contracts} belong to tenants with a last name or company "
        f"name; no email required ({len(without_email)} of {len(tenant_ids)} tenants have none: reached "
        "by post)",
        failed="sync rule last-name: {n} contacts carry a rental contract without a last name or company "
        "name (first: {first}); the mapping must drop such tenants — report this as a bug",
        counts={**counts, "tenants_failing": len(unnamed), "tenants_without_email": len(without_email)},
        details=[f"{c}: tenant without last name or company name" for c in unnamed],
    )


def email_rule_dropped(
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    contracts: pd.DataFrame,
    renter_type: str,
    *,
    warn_share: float,
    rule: SyncRule = SyncRule.EMAIL,
) -> CheckOutcome:
    """How many tenants and rental contracts the sync rule kept out of casavi.

    Tenants the rule drops are the rule working, not a failure: the check passes with the counts and
    warns only when the share of tenants dropped exceeds `warn_share` (a broken email column, say).
    """
    rows = with_valid_email(mieter)
    passing = tenant_rows_synced(rows, rule)
    tenants = set(mieter["person_nr"])
    dropped_tenants = sorted(tenants - set(mieter.loc[passing, "person_nr"]))
    synced = set(contracts.loc[contracts["contract_type"] == renter_type, "number"])
    dropped_contracts = [f"vertrag_nr={nr}" for nr in mietvertraege["vertrag_nr"] if nr not in synced]
    share = len(dropped_tenants) / len(tenants) if tenants else 0.0
    without_email = int(rows[VALID_EMAIL_COLUMN].isna().sum())
    counts = {
        "tenants": len(tenants),
        "tenants_dropped": len(dropped_tenants),
        "tenant_rows_without_valid_email": without_email,
        "rental_contracts_dropped": len(dropped_contracts),
        "rental_contracts": len(mietvertraege),
    }
    dropped = f"{len(dropped_tenants)} of {len(tenants)} tenants ({share:.0%})"
    if rule is SyncRule.EMAIL:
        summary = (
            f"sync rule email: {dropped} have no valid email and {len(dropped_contracts)} rental contracts "
            "no such tenant: not synced, as the email rule says"
        )
        hint = "is the email column of mieter.csv empty or broken?"
    else:
        summary = (
            f"sync rule last-name: {dropped} have neither last name nor company name and "
            f"{len(dropped_contracts)} rental contracts no such tenant: not synced; no email is required "
            f"({_plural(without_email, 'tenant row')} without a valid email: reached by post)"
        )
        hint = "are the nachname and firma columns of mieter.csv empty?"
    if share <= warn_share:
        return CheckOutcome(True, Severity.WARN, summary, counts)
    return _outcome(
        [f"person_nr={p}" for p in dropped_tenants] + dropped_contracts,
        Severity.WARN,
        ok=summary,
        failed=f"{summary}; that is more than the usual {warn_share:.0%} (first: {{first}}): {hint} "
        "(CASAVI_EMAIL_DROP_WARN_SHARE sets the threshold)",
        counts=counts,
    )
