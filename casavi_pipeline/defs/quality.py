"""Asset checks on the casavi objects: they run before anything is written to casavi.

Every check is partitioned like its asset, so it loads only its own Mandant: one broken Mandant never
blocks another. They run in one step (`casavi_quality`), each still a check of its own asset in the UI. ERROR checks are blocking: when one fails, that Mandant's changeset and sync do not run
in the same run, and the check's description says why in one line. Metadata carries counts, reference
ids and ERP keys only — never names or emails. The logic lives in `casavi_pipeline.mapping.quality`
and `casavi_pipeline.mapping.schemas` (pandera, built from the adapter's field rules).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SyncPolicy
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.mapping import quality
from casavi_pipeline.mapping.people import conflicting_persons
from casavi_pipeline.mapping.quality import CheckOutcome, Severity
from casavi_pipeline.mapping.schemas import RowProblem, contract_problems, payload_problems

_SEVERITY = {Severity.ERROR: dg.AssetCheckSeverity.ERROR, Severity.WARN: dg.AssetCheckSeverity.WARN}
_ERP = [entity.name for entity in ENTITIES]
_PEOPLE = ["mieter", "mietvertraege", "eigentuemer", "eigentuemervertraege"]
_CASAVI = ["casavi_addresses", "casavi_properties", "casavi_units", "casavi_contracts", "casavi_contacts"]


def _result(outcome: CheckOutcome, **extra: object) -> dg.AssetCheckResult:
    """The check's result; `extra` metadata (e.g. the sync rule in force) goes beside the counts."""
    metadata: dict[str, object] = {"reason": outcome.reason, **extra, **outcome.counts}
    if outcome.ids:
        metadata["offending_ids"] = dg.MetadataValue.json(list(outcome.ids))
    if outcome.details:
        metadata["details"] = dg.MetadataValue.md("\n".join(f"- `{line}`" for line in outcome.details))
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=_SEVERITY[outcome.severity],
        description=outcome.reason,
        metadata=metadata,
    )


@dataclass(frozen=True)
class _Check:
    """One check: its spec (name, asset, blocking, description, the other assets it reads) and what it
    computes from the run's frames (by asset name), the sync policy and the Mandant."""

    spec: dg.AssetCheckSpec
    run: Callable[[dict[str, pd.DataFrame], SyncPolicy, str], dg.AssetCheckResult]


def _spec(
    asset: str, name: str, description: str, *, reads: tuple[str, ...] = (), blocking: bool = True
) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name,
        asset=asset,
        description=description,
        blocking=blocking,
        additional_deps=list(reads),
        partitions_def=mandant_partitions,
    )


# --- unique composite ids (rule 3) ------------------------------------------------------------------
def _unique_ids_check(asset: str, noun: str, singular: str) -> _Check:
    return _Check(
        _spec(
            asset,
            f"unique_{singular}_ids",
            f"No two ERP records compose to the same {singular} reference id (an ERP number containing the "
            "separator); names both records and a separator that would work.",
        ),
        lambda f, policy, _: _result(quality.unique_ids(noun, f[asset], policy.id_separator, singular=singular)),
    )


# --- payload schema (casavi's 400 rules) ------------------------------------------------------------
def _problems_outcome(
    problems: list[RowProblem], labels: pd.Series, rows: int, noun: str
) -> quality.CheckOutcome:
    """One line per problem, named by the row's reference id or ERP key and casavi's field name."""
    labels = labels.reset_index(drop=True)
    lines = [f"{labels.iloc[p.row] if p.row >= 0 else '(column)'}: {p.field} {p.problem}" for p in problems]
    return quality._outcome(
        [line.split(":", 1)[0] for line in lines],
        Severity.ERROR,
        ok=f"all {rows} {noun} satisfy casavi's field rules",
        failed=f"{{n}} {noun} would be rejected by casavi (first: {{first}}); fix the ERP values named",
        counts={"rows": rows, "problems": len(problems)},
        details=lines,
    )


def _payload_check(asset: str, kind: ObjectKind) -> _Check:
    def run(f: dict[str, pd.DataFrame], _policy: SyncPolicy, _mandant: str) -> dg.AssetCheckResult:
        frame = f[asset]
        return _result(_problems_outcome(payload_problems(kind, frame), frame["id"], len(frame), kind.collection))

    description = (
        f"Every {kind.value} satisfies casavi's field rules (required fields, lengths, enums, dates), checked "
        "with pandera and the adapter's rules, so casavi will not answer 400."
    )
    return _Check(_spec(asset, f"{kind.value}_payload_schema", description), run)


def _contract_payload(f: dict[str, pd.DataFrame], _policy: SyncPolicy, _mandant: str) -> dg.AssetCheckResult:
    contracts = f["casavi_contracts"]
    return _result(_problems_outcome(contract_problems(contracts), contracts["erp_key"], len(contracts), "contracts"))


# --- the sync rule (rule 2) ------------------------------------------------------------------------
# The check names are kept from the time the email rule was the only one; each result names the rule in
# force (CASAVI_SYNC_RULE) and checks that rule, never an email the rule does not require.
def _email_rule(f: dict[str, pd.DataFrame], policy: SyncPolicy, _mandant: str) -> dg.AssetCheckResult:
    rule = policy.sync_rule
    outcome = quality.email_rule(
        f["casavi_contracts"], f["casavi_contacts"], api.ContractType.RENTER.value, rule=rule
    )
    return _result(outcome, sync_rule=rule.value)


def _email_rule_dropped(f: dict[str, pd.DataFrame], policy: SyncPolicy, _mandant: str) -> dg.AssetCheckResult:
    outcome = quality.email_rule_dropped(
        f["mieter"],
        f["mietvertraege"],
        f["casavi_contracts"],
        api.ContractType.RENTER.value,
        warn_share=policy.email_drop_warn_share,
        rule=policy.sync_rule,
    )
    return _result(outcome, sync_rule=policy.sync_rule.value)


def _conflicting_persons(f: dict[str, pd.DataFrame], policy: SyncPolicy, mandant: str) -> dg.AssetCheckResult:
    conflicts = conflicting_persons(
        *(f[name] for name in _PEOPLE), mandant=mandant, separator=policy.id_separator, rule=policy.sync_rule
    )
    return _result(quality.conflicting_person_rows(list(conflicts["contact_id"]), len(f["casavi_contacts"])))


CHECKS = [
    _Check(
        _spec(
            "casavi_addresses",
            "unique_streets_within_property",
            "No two buildings of one economic unit have the same street and house number: casavi identifies "
            "a building by its street within the property. Names both buildings and their street.",
        ),
        lambda f, _policy, _mandant: _result(quality.unique_streets(f["casavi_addresses"])),
    ),
    _unique_ids_check("casavi_properties", "properties", "property"),
    _unique_ids_check("casavi_units", "units", "unit"),
    _unique_ids_check("casavi_contacts", "contacts", "contact"),
    _payload_check("casavi_properties", ObjectKind.PROPERTY),
    _payload_check("casavi_units", ObjectKind.UNIT),
    _payload_check("casavi_contacts", ObjectKind.CONTACT),
    _Check(
        _spec(
            "casavi_contracts",
            "contract_payload_schema",
            "Every contract entry satisfies casavi's field rules (type, property, unit, dates; end not before "
            "start), so casavi will not answer 400 for the contact carrying it.",
        ),
        _contract_payload,
    ),
    # --- referential integrity (the ERP's foreign keys: erp_foreign_keys_check below) ---------------
    _Check(
        _spec(
            "casavi_units",
            "units_reference_existing_property_and_address",
            "Every unit's property exists and its address is one of that property's streets.",
            reads=("casavi_properties",),
        ),
        lambda f, _policy, _mandant: _result(quality.unit_references(f["casavi_units"], f["casavi_properties"])),
    ),
    _Check(
        _spec(
            "casavi_contracts",
            "contracts_reference_existing_unit",
            "Every contract's unit exists among the synced units and belongs to the contract's property.",
            reads=("casavi_units",),
        ),
        lambda f, _policy, _mandant: _result(quality.contract_references(f["casavi_contracts"], f["casavi_units"])),
    ),
    _Check(
        _spec(
            "casavi_contacts",
            "tenants_have_valid_email",
            "Every contact that carries a rental contract passes the sync rule (CASAVI_SYNC_RULE), after "
            "mapping: a valid email under the rule email; a last name or company name under last-name (no "
            "email required).",
            reads=("casavi_contracts",),
        ),
        _email_rule,
    ),
    _Check(
        _spec(
            "casavi_contracts",
            "email_rule_dropped",
            "How many tenants and rental contracts (no synced tenant) the sync rule (CASAVI_SYNC_RULE) keeps "
            "out of casavi: tenants without a valid email under email, without a last name or company name "
            "under last-name. Passes with the counts: that is the rule working. Warns only when the share of "
            "tenants dropped exceeds CASAVI_EMAIL_DROP_WARN_SHARE (default 25 %), e.g. an empty email column.",
            reads=("mieter", "mietvertraege"),
            blocking=False,
        ),
        _email_rule_dropped,
    ),
    _Check(
        _spec(
            "casavi_contacts",
            "conflicting_person_rows",
            "How many persons have rows that differ across their contracts (the row of the latest contract "
            "is synced). Passes with the counts and ids; warns only when more than 5 % of the contacts are "
            "affected (a broken export).",
            reads=tuple(_PEOPLE),
            blocking=False,
        ),
        _conflicting_persons,
    ),
]


# The checks of the casavi objects in one step: each step costs Dagster events (start, success, hook, two
# per input loaded), and 13 steps loaded the same 9 frames 22 times (benchmarks/RESULTS.md, "Dagster run ÷
# bare work"). Each is still a check of its own asset in the UI, selectable alone (`can_subset`), blocking
# as before. The ERP foreign keys are checked in a step of their own: that check blocks the mapping, which
# these checks follow.
@dg.multi_asset_check(
    name="casavi_quality",
    specs=[check.spec for check in CHECKS],
    ins={name: dg.AssetIn(name) for name in [*_CASAVI, *_PEOPLE]},
    can_subset=True,
)
def casavi_quality(
    context: dg.AssetCheckExecutionContext,
    sync_policy: SyncPolicy,
    casavi_addresses: pd.DataFrame,
    casavi_properties: pd.DataFrame,
    casavi_units: pd.DataFrame,
    casavi_contracts: pd.DataFrame,
    casavi_contacts: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
) -> Iterator[dg.AssetCheckResult]:
    frames = {
        "casavi_addresses": casavi_addresses, "casavi_properties": casavi_properties, "casavi_units": casavi_units,
        "casavi_contracts": casavi_contracts, "casavi_contacts": casavi_contacts,
        "mietvertraege": mietvertraege, "mieter": mieter,
        "eigentuemervertraege": eigentuemervertraege, "eigentuemer": eigentuemer,
    }  # fmt: skip
    for check in CHECKS:
        if check.spec.key in context.selected_asset_check_keys:
            result = check.run(frames, sync_policy, context.partition_key)
            yield dg.AssetCheckResult(  # the result, as this spec's in a multi-check step
                asset_key=check.spec.asset_key, check_name=check.spec.name, passed=result.passed,
                severity=result.severity, description=result.description, metadata=result.metadata,
            )  # fmt: skip


@dg.asset_check(
    asset="verwaltungseinheiten",
    name="erp_foreign_keys_resolve",
    blocking=True,
    partitions_def=mandant_partitions,
    additional_ins={name: dg.AssetIn(name) for name in _ERP if name != "verwaltungseinheiten"},
    description="Every ERP foreign key resolves (Gebäude→WE, VE→Gebäude, Mietvertrag→VE, Mieter→Mietvertrag, "
    "Eigentümervertrag→VE, Eigentümer→Eigentümervertrag); dangling rows are listed by their keys.",
)
def erp_foreign_keys_check(
    verwaltungseinheiten: pd.DataFrame,
    wirtschaftseinheiten: pd.DataFrame,
    gebaeude: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
) -> dg.AssetCheckResult:
    frames = {
        "wirtschaftseinheiten": wirtschaftseinheiten,
        "gebaeude": gebaeude,
        "verwaltungseinheiten": verwaltungseinheiten,
        "mietvertraege": mietvertraege,
        "mieter": mieter,
        "eigentuemervertraege": eigentuemervertraege,
        "eigentuemer": eigentuemer,
    }
    return _result(quality.erp_foreign_keys(frames))


defs = dg.Definitions(asset_checks=[erp_foreign_keys_check, casavi_quality])
