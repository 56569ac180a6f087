"""Asset checks on the casavi objects: they run before anything is written to casavi.

Every check is partitioned like its asset, so it loads only its own Mandant: one broken Mandant never
blocks another. ERROR checks are blocking: when one fails, that Mandant's changeset and sync do not run
in the same run, and the check's description says why in one line. Metadata carries counts, reference
ids and ERP keys only — never names or emails. The logic lives in `casavi_pipeline.mapping.quality`
and `casavi_pipeline.mapping.schemas` (pandera, built from the adapter's field rules).
"""

import dagster as dg
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.casavi import (
    casavi_addresses,
    casavi_contacts,
    casavi_contracts,
    casavi_properties,
    casavi_units,
)
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SyncPolicy
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.mapping import quality
from casavi_pipeline.mapping.people import conflicting_persons
from casavi_pipeline.mapping.quality import CheckOutcome, Severity
from casavi_pipeline.mapping.schemas import RowProblem, contract_problems, payload_problems

_SEVERITY = {Severity.ERROR: dg.AssetCheckSeverity.ERROR, Severity.WARN: dg.AssetCheckSeverity.WARN}
_ERP_INS = {entity.name: dg.AssetIn(entity.name) for entity in ENTITIES}


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


def _check(asset: dg.AssetsDefinition | dg.AssetKey, *, blocking: bool = True, **kwargs):
    """`dg.asset_check`, partitioned per Mandant like every asset of the pipeline."""
    return dg.asset_check(asset=asset, blocking=blocking, partitions_def=mandant_partitions, **kwargs)


# --- unique composite ids (rule 3) ------------------------------------------------------------------
def _unique_ids_check(asset: dg.AssetsDefinition, noun: str, singular: str) -> dg.AssetChecksDefinition:
    @_check(
        asset,
        name=f"unique_{singular}_ids",
        description=f"No two ERP records compose to the same {singular} reference id (an ERP number "
        "containing the separator); names both records and a separator that would work.",
    )
    def _unique(frame: pd.DataFrame, sync_policy: SyncPolicy) -> dg.AssetCheckResult:
        return _result(quality.unique_ids(noun, frame, sync_policy.id_separator, singular=singular))

    return _unique


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


def _payload_check(asset: dg.AssetsDefinition, kind: ObjectKind) -> dg.AssetChecksDefinition:
    @_check(
        asset,
        name=f"{kind.value}_payload_schema",
        description=f"Every {kind.value} satisfies casavi's field rules (required fields, lengths, enums, "
        "dates), checked with pandera and the adapter's rules, so casavi will not answer 400.",
    )
    def _payload(frame: pd.DataFrame) -> dg.AssetCheckResult:
        return _result(
            _problems_outcome(payload_problems(kind, frame), frame["id"], len(frame), kind.collection)
        )

    return _payload


@_check(
    casavi_contracts,
    name="contract_payload_schema",
    description="Every contract entry satisfies casavi's field rules (type, property, unit, dates; end not "
    "before start), so casavi will not answer 400 for the contact carrying it.",
)
def contract_payload_check(casavi_contracts: pd.DataFrame) -> dg.AssetCheckResult:
    outcome = _problems_outcome(
        contract_problems(casavi_contracts), casavi_contracts["erp_key"], len(casavi_contracts), "contracts"
    )
    return _result(outcome)


@_check(
    casavi_addresses,
    name="unique_streets_within_property",
    description="No two buildings of one economic unit have the same street and house number: casavi "
    "identifies a building by its street within the property. Names both buildings.",
)
def unique_streets_check(casavi_addresses: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(quality.unique_streets(casavi_addresses))


# --- referential integrity --------------------------------------------------------------------------
@_check(
    casavi_units,
    name="units_reference_existing_property_and_address",
    additional_ins={"casavi_properties": dg.AssetIn("casavi_properties")},
    description="Every unit's property exists and its address is one of that property's streets.",
)
def units_reference_check(casavi_units: pd.DataFrame, casavi_properties: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(quality.unit_references(casavi_units, casavi_properties))


@_check(
    casavi_contracts,
    name="contracts_reference_existing_unit",
    additional_ins={"casavi_units": dg.AssetIn("casavi_units")},
    description="Every contract's unit exists among the synced units and belongs to the contract's property.",
)
def contracts_reference_check(
    casavi_contracts: pd.DataFrame, casavi_units: pd.DataFrame
) -> dg.AssetCheckResult:
    return _result(quality.contract_references(casavi_contracts, casavi_units))


@_check(
    dg.AssetKey("verwaltungseinheiten"),
    name="erp_foreign_keys_resolve",
    additional_ins={name: ins for name, ins in _ERP_INS.items() if name != "verwaltungseinheiten"},
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


# --- the sync rule (rule 2) ------------------------------------------------------------------------
# The check names are kept from the time the email rule was the only one; each result names the rule in
# force (CASAVI_SYNC_RULE) and checks that rule, never an email the rule does not require.
@_check(
    casavi_contacts,
    name="tenants_have_valid_email",
    additional_ins={"casavi_contracts": dg.AssetIn("casavi_contracts")},
    description="Every contact that carries a rental contract passes the sync rule (CASAVI_SYNC_RULE), after "
    "mapping: a valid email under the rule email; a last name or company name under last-name (no email "
    "required).",
)
def email_rule_check(
    sync_policy: SyncPolicy, casavi_contacts: pd.DataFrame, casavi_contracts: pd.DataFrame
) -> dg.AssetCheckResult:
    rule = sync_policy.sync_rule
    outcome = quality.email_rule(casavi_contracts, casavi_contacts, api.ContractType.RENTER.value, rule=rule)
    return _result(outcome, sync_rule=rule.value)


@_check(
    casavi_contracts,
    name="email_rule_dropped",
    blocking=False,
    additional_ins={"mieter": dg.AssetIn("mieter"), "mietvertraege": dg.AssetIn("mietvertraege")},
    description="How many tenants and rental contracts (no synced tenant) the sync rule (CASAVI_SYNC_RULE) "
    "keeps out of casavi: tenants without a valid email under email, without a last name or company name "
    "under last-name. Passes with the counts: that is the rule working. Warns only when the share of "
    "tenants dropped exceeds CASAVI_EMAIL_DROP_WARN_SHARE (default 25 %), e.g. an empty email column.",
)
def email_rule_dropped_check(
    sync_policy: SyncPolicy,
    casavi_contracts: pd.DataFrame,
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
) -> dg.AssetCheckResult:
    outcome = quality.email_rule_dropped(
        mieter,
        mietvertraege,
        casavi_contracts,
        api.ContractType.RENTER.value,
        warn_share=sync_policy.email_drop_warn_share,
        rule=sync_policy.sync_rule,
    )
    return _result(outcome, sync_rule=sync_policy.sync_rule.value)


@_check(
    casavi_contacts,
    name="conflicting_person_rows",
    blocking=False,
    additional_ins={
        name: _ERP_INS[name] for name in ("mieter", "mietvertraege", "eigentuemer", "eigentuemervertraege")
    },
    description="How many persons have rows that differ across their contracts (the row of the latest "
    "contract is synced). Passes with the counts and ids; warns only when more than 5 % of the contacts "
    "are affected (a broken export).",
)
def conflicting_persons_check(
    context: dg.AssetCheckExecutionContext,
    sync_policy: SyncPolicy,
    casavi_contacts: pd.DataFrame,
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
) -> dg.AssetCheckResult:
    conflicts = conflicting_persons(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        mandant=context.partition_key,
        separator=sync_policy.id_separator,
        rule=sync_policy.sync_rule,
    )
    return _result(quality.conflicting_person_rows(list(conflicts["contact_id"]), len(casavi_contacts)))


quality_checks = [
    unique_streets_check,
    _unique_ids_check(casavi_properties, "properties", "property"),
    _unique_ids_check(casavi_units, "units", "unit"),
    _unique_ids_check(casavi_contacts, "contacts", "contact"),
    _payload_check(casavi_properties, ObjectKind.PROPERTY),
    _payload_check(casavi_units, ObjectKind.UNIT),
    _payload_check(casavi_contacts, ObjectKind.CONTACT),
    contract_payload_check,
    units_reference_check,
    contracts_reference_check,
    erp_foreign_keys_check,
    email_rule_check,
    email_rule_dropped_check,
    conflicting_persons_check,
]

defs = dg.Definitions(asset_checks=quality_checks)
