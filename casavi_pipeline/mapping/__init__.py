"""ERP frames → casavi frames (domain columns), and the checks on them. Pure functions, no Dagster."""

from __future__ import annotations

import pandas as pd

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.contracts import map_contracts
from casavi_pipeline.mapping.people import linked_units, map_contacts
from casavi_pipeline.mapping.real_estate import map_addresses, map_properties, map_units
from casavi_pipeline.mapping.scope import SyncRule, left_out


def map_mandant(
    erp: dict[str, pd.DataFrame], *, mandant: str, separator: str, rule: SyncRule
) -> dict[str, pd.DataFrame]:
    """All casavi frames of one Mandant from its seven ERP frames (the casavi assets' one step, and the
    benchmarks' bare work), under the sync rule (CASAVI_SYNC_RULE), and `left_out`: the ids of the
    export's records that the rule leaves out."""
    ids = {"mandant": mandant, "separator": separator, "rule": rule}
    people = (erp["mieter"], erp["mietvertraege"], erp["eigentuemer"], erp["eigentuemervertraege"])
    places = {"mandant": mandant, "separator": separator}
    addresses = map_addresses(erp["gebaeude"], **places)
    linked = linked_units(*people, **ids)
    contracts = map_contracts(
        erp["mietvertraege"], erp["mieter"], erp["eigentuemervertraege"], erp["eigentuemer"],
        erp["verwaltungseinheiten"], **ids,
    )  # fmt: skip
    properties = map_properties(erp["wirtschaftseinheiten"], addresses, linked, **places)
    units = map_units(erp["verwaltungseinheiten"], erp["gebaeude"], linked, **places)
    contacts = map_contacts(*people, contracts, **ids)
    mapped = {ObjectKind.PROPERTY: properties, ObjectKind.UNIT: units, ObjectKind.CONTACT: contacts}
    return {
        "addresses": addresses,
        "properties": properties,
        "units": units,
        "contacts": contacts,
        "contracts": contracts,
        "left_out": left_out(erp, mapped, **places),
    }
