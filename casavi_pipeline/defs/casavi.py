"""casavi mapping assets: ERP frames → the rows the sync will PUT, one asset per casavi object kind.

Thin wiring over `casavi_pipeline.mapping`; the lineage reads like the mapping table of the README
(Wirtschaftseinheit → property, Gebäude → address → property, Verwaltungseinheit → unit, Mietvertrag →
contract → contact, ...). Addresses and contracts have no reference id in casavi: they are parts of
their property and contact, and their assets are the flat rows those embed. Under the sync rule
`last-name` (`CASAVI_SYNC_RULE`) properties and units follow the synced contracts: they read the
tenants, owners and their contracts to send only what a synced contract links.
"""

import dagster as dg
import pandas as pd

from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SyncPolicy
from casavi_pipeline.mapping.contracts import map_contracts
from casavi_pipeline.mapping.people import linked_units, map_contacts
from casavi_pipeline.mapping.real_estate import map_addresses, map_properties, map_units

PREVIEW_ROWS = 5


def _result(frame: pd.DataFrame, id_column: str = "id", **extra: object) -> dg.Output[pd.DataFrame]:
    """The frame plus metadata: row count and the first reference ids (never names or emails), and `extra`."""
    preview = ", ".join(frame[id_column].drop_duplicates().head(PREVIEW_ROWS))
    metadata = {"dagster/row_count": len(frame), "first_reference_ids": preview, **extra}
    return dg.Output(frame, metadata=metadata)


def _scoped(frame: pd.DataFrame, records: pd.DataFrame, sync_policy: SyncPolicy) -> dg.Output[pd.DataFrame]:
    """A property or unit frame, with how many of the export's `records` the sync rule left out (vacant
    units and properties with nothing rented, under last-name)."""
    return _result(
        frame, sync_rule=sync_policy.sync_rule.value, left_out_by_sync_rule=len(records) - len(frame)
    )


def _linked(
    context: dg.AssetExecutionContext, sync_policy: SyncPolicy, *people: pd.DataFrame
) -> pd.DataFrame | None:
    """The units a synced contract links when the sync rule sends only those, else None (all)."""
    return linked_units(
        *people, mandant=context.partition_key, separator=sync_policy.id_separator, rule=sync_policy.sync_rule
    )


_COMMON = {"partitions_def": mandant_partitions, "group_name": "casavi", "kinds": {"duckdb", "pandas"}}


@dg.asset(**_COMMON, description="Gebäude → the addresses of their casavi property (one per building).")
def casavi_addresses(
    context: dg.AssetExecutionContext, sync_policy: SyncPolicy, gebaeude: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    frame = map_addresses(gebaeude, mandant=context.partition_key, separator=sync_policy.id_separator)
    return _result(frame, "property_id")


@dg.asset(
    **_COMMON,
    description="Wirtschaftseinheiten → casavi properties (Liegenschaften) with their addresses; under the "
    "sync rule last-name only those a synced contract links.",
)
def casavi_properties(
    context: dg.AssetExecutionContext,
    sync_policy: SyncPolicy,
    wirtschaftseinheiten: pd.DataFrame,
    casavi_addresses: pd.DataFrame,
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = map_properties(
        wirtschaftseinheiten,
        casavi_addresses,
        _linked(context, sync_policy, mieter, mietvertraege, eigentuemer, eigentuemervertraege),
        mandant=context.partition_key,
        separator=sync_policy.id_separator,
    )
    return _scoped(frame, wirtschaftseinheiten, sync_policy)


@dg.asset(
    **_COMMON,
    description="Verwaltungseinheiten → casavi units (Einheiten), linked to their property and, by street, "
    "to their building's address; under the sync rule last-name only those a synced contract links (no "
    "vacant unit).",
)
def casavi_units(
    context: dg.AssetExecutionContext,
    sync_policy: SyncPolicy,
    verwaltungseinheiten: pd.DataFrame,
    gebaeude: pd.DataFrame,
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = map_units(
        verwaltungseinheiten,
        gebaeude,
        _linked(context, sync_policy, mieter, mietvertraege, eigentuemer, eigentuemervertraege),
        mandant=context.partition_key,
        separator=sync_policy.id_separator,
    )
    return _scoped(frame, verwaltungseinheiten, sync_policy)


@dg.asset(
    **_COMMON,
    description="Mietverträge with their synced tenants (type RENTER) and Eigentümerverträge with their "
    "synced owners (type OWNER) → the contracts casavi keeps inside each contact, one row per contract and "
    "person. Which are synced is CASAVI_SYNC_RULE: email (tenants with a valid email, all owners) or "
    "last-name (tenants with a name, owners of a unit a synced tenant rents).",
)
def casavi_contracts(
    context: dg.AssetExecutionContext,
    sync_policy: SyncPolicy,
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    verwaltungseinheiten: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = map_contracts(
        mietvertraege,
        mieter,
        eigentuemervertraege,
        eigentuemer,
        verwaltungseinheiten,
        mandant=context.partition_key,
        separator=sync_policy.id_separator,
        rule=sync_policy.sync_rule,
    )
    return _result(frame, "contact_id")


@dg.asset(
    **_COMMON,
    description="Synced Mieter and Eigentümer (CASAVI_SYNC_RULE) → casavi contacts, one per person, each "
    "carrying its contracts (conflicting rows: the contract with the latest beginn wins).",
)
def casavi_contacts(
    context: dg.AssetExecutionContext,
    sync_policy: SyncPolicy,
    mieter: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    casavi_contracts: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = map_contacts(
        mieter,
        mietvertraege,
        eigentuemer,
        eigentuemervertraege,
        casavi_contracts,
        mandant=context.partition_key,
        separator=sync_policy.id_separator,
        rule=sync_policy.sync_rule,
    )
    return _result(frame)


casavi_assets = [casavi_addresses, casavi_properties, casavi_units, casavi_contracts, casavi_contacts]

defs = dg.Definitions(assets=casavi_assets)
