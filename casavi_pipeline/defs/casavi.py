"""casavi mapping assets: ERP frames → the rows the sync will PUT, one asset per casavi object kind, all
mapped in one step (`casavi_mapping`).

Thin wiring over `casavi_pipeline.mapping`; the lineage reads like the mapping table of the README
(Wirtschaftseinheit → property, Gebäude → address → property, Verwaltungseinheit → unit, Mietvertrag →
contract → contact, ...). Addresses and contracts have no reference id in casavi: they are parts of
their property and contact, and their assets are the flat rows those embed. Under the sync rule
`last-name` (`CASAVI_SYNC_RULE`) properties and units follow the synced contracts: they read the
tenants, owners and their contracts to send only what a synced contract links. `casavi_left_out` is what
the rule leaves out of the export: the changeset tells by it why an object leaves casavi's scope.
"""

import dagster as dg
import pandas as pd

from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SyncPolicy
from casavi_pipeline.mapping import map_mandant

PREVIEW_ROWS = 5


def _result(
    name: str, frame: pd.DataFrame, id_column: str = "id", **extra: object
) -> dg.Output[pd.DataFrame]:
    """The frame plus metadata: row count and the first reference ids (never names or emails), and `extra`."""
    preview = ", ".join(frame[id_column].drop_duplicates().head(PREVIEW_ROWS))
    metadata = {"dagster/row_count": len(frame), "first_reference_ids": preview, **extra}
    return dg.Output(frame, output_name=name, metadata=metadata)


def _scoped(
    name: str, frame: pd.DataFrame, records: pd.DataFrame, sync_policy: SyncPolicy
) -> dg.Output[pd.DataFrame]:
    """A property or unit frame, with how many of the export's `records` the sync rule left out (vacant
    units and properties with nothing rented, under last-name)."""
    return _result(
        name, frame, sync_rule=sync_policy.sync_rule.value, left_out_by_sync_rule=len(records) - len(frame)
    )


_PEOPLE = {"mieter", "mietvertraege", "eigentuemer", "eigentuemervertraege"}
_OUTS = {
    "casavi_addresses": (
        "Gebäude → the addresses of their casavi property (one per building).",
        {"gebaeude"},
    ),
    "casavi_properties": (
        "Wirtschaftseinheiten → casavi properties (Liegenschaften) with their addresses; under the sync rule "
        "last-name only those a synced contract links.",
        {"wirtschaftseinheiten", "casavi_addresses", *_PEOPLE},
    ),
    "casavi_units": (
        "Verwaltungseinheiten → casavi units (Einheiten), linked to their property and, by street, to their "
        "building's address; under the sync rule last-name only those a synced contract links (no vacant unit).",
        {"verwaltungseinheiten", "gebaeude", *_PEOPLE},
    ),
    "casavi_contracts": (
        "Mietverträge with their synced tenants (type RENTER) and Eigentümerverträge with their synced owners "
        "(type OWNER) → the contracts casavi keeps inside each contact, one row per contract and person. Which "
        "are synced is CASAVI_SYNC_RULE: email (tenants with a valid email, all owners) or last-name (tenants "
        "with a name, owners of a unit a synced tenant rents).",
        {"mietvertraege", "mieter", "eigentuemervertraege", "eigentuemer", "verwaltungseinheiten"},
    ),
    "casavi_contacts": (
        "Synced Mieter and Eigentümer (CASAVI_SYNC_RULE) → casavi contacts, one per person, each carrying its "
        "contracts (conflicting rows: the contract with the latest beginn wins).",
        {*_PEOPLE, "casavi_contracts"},
    ),
    "casavi_left_out": (
        "The reference ids (kind, ref_id) the export's records compose that CASAVI_SYNC_RULE leaves out: a "
        "tenant without a valid email; under last-name vacant units, their owners and properties. An object "
        "among them that leaves casavi's scope is 'out of the sync rule', any other 'removed from the export'.",
        {
            "wirtschaftseinheiten",
            "verwaltungseinheiten",
            "mieter",
            "eigentuemer",
            "casavi_properties",
            "casavi_units",
            "casavi_contacts",
        },
    ),
}


# One step maps all five (as `erp_export` reads all seven files in one): each step of a run costs
# Dagster events (start, inputs, outputs, hooks), and five steps loaded the same ERP frames 23 times
# (benchmarks/RESULTS.md, "Dagster run ÷ bare work"). The lineage still shows each asset's own inputs.
@dg.multi_asset(
    name="casavi_mapping",
    outs={
        name: dg.AssetOut(group_name="casavi", kinds={"duckdb", "pandas"}, description=description)
        for name, (description, _) in _OUTS.items()
    },
    internal_asset_deps={name: {dg.AssetKey(dep) for dep in deps} for name, (_, deps) in _OUTS.items()},
    partitions_def=mandant_partitions,
)
def casavi_mapping(
    context: dg.AssetExecutionContext,
    sync_policy: SyncPolicy,
    wirtschaftseinheiten: pd.DataFrame,
    gebaeude: pd.DataFrame,
    verwaltungseinheiten: pd.DataFrame,
    mietvertraege: pd.DataFrame,
    mieter: pd.DataFrame,
    eigentuemervertraege: pd.DataFrame,
    eigentuemer: pd.DataFrame,
):
    erp = {
        "wirtschaftseinheiten": wirtschaftseinheiten, "gebaeude": gebaeude,
        "verwaltungseinheiten": verwaltungseinheiten, "mietvertraege": mietvertraege, "mieter": mieter,
        "eigentuemervertraege": eigentuemervertraege, "eigentuemer": eigentuemer,
    }  # fmt: skip
    frames = map_mandant(
        erp, mandant=context.partition_key, separator=sync_policy.id_separator, rule=sync_policy.sync_rule
    )
    yield _result("casavi_addresses", frames["addresses"], "property_id")
    yield _scoped("casavi_properties", frames["properties"], wirtschaftseinheiten, sync_policy)
    yield _scoped("casavi_units", frames["units"], verwaltungseinheiten, sync_policy)
    yield _result("casavi_contracts", frames["contracts"], "contact_id")
    yield _result("casavi_contacts", frames["contacts"])
    yield _result("casavi_left_out", frames["left_out"], "ref_id")


casavi_assets = [casavi_mapping]

defs = dg.Definitions(assets=casavi_assets)
