"""Links back to the ERP: per Mandant, every synced object with its ERP numbers and casavi's `appLink`, as
CSV and Parquet files in CASAVI_LINKS_DIR (off when unset) that an ERP import job picks up.

Thin wiring over `casavi_pipeline.links`: the links come from the run's own read of casavi (the snapshot's
slice of the listing), the ERP numbers from the mapped frames, which objects from what casavi confirmed.

    casavi_sync ─────────────────────────────────────┐
    casavi_properties, casavi_units, casavi_contacts ─┴─► casavi_links
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import ErpExport, SnapshotStore
from casavi_pipeline.defs.sync import casavi_sync
from casavi_pipeline.links import COLUMNS, Written, write_links

_COLUMN_MEANINGS = {
    "mandant_nr": "the Mandant",
    "kind": "property, unit or contact",
    "ref_id": "the reference id in casavi (composed from the Mandant and the ERP numbers)",
    "we_nr": "Wirtschaftseinheit (property, unit)",
    "geb_nr": "Gebäude (unit)",
    "ve_nr": "Verwaltungseinheit (unit)",
    "person_nr": "Mieter/Eigentümer (contact)",
    "app_link": "casavi's link to the object (appLink) as last read; empty: none yet, or casavi returned none",
}
_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(name, "string", description=_COLUMN_MEANINGS[name]) for name in COLUMNS]
)


def _metadata(written: Written) -> dict[str, object]:
    """Counts, the share with a link and the files: kinds and numbers only."""
    metadata: dict[str, object] = {
        "dagster/row_count": written.rows,
        "with_link": written.with_link,
        "share_with_link": dg.MetadataValue.float(round(written.share_with_link, 4)),
        "path": dg.MetadataValue.path(str(written.paths["csv"])),
        "parquet": dg.MetadataValue.path(str(written.paths["parquet"])),
        "rewritten": bool(written.replaced),
        "summary": written.summary,
    }
    for kind, counts in written.kinds.items():
        metadata[f"rows/{kind}"] = counts.rows
        metadata[f"with_link/{kind}"] = counts.with_link
        metadata[f"not_listed_yet/{kind}"] = counts.not_listed
        metadata[f"listed_without_link/{kind}"] = counts.listed_without_link
    return metadata


@dg.asset(
    deps=[casavi_sync],  # what casavi confirmed in this run: a dry run or a failed sync writes no links
    partitions_def=mandant_partitions,
    group_name="sync",
    kinds={"csv", "parquet"},
    output_required=False,  # CASAVI_LINKS_DIR unset: nothing is written, nothing materialized
    metadata={"dagster/column_schema": _SCHEMA},
    description="Links back to the ERP: every object the sync manages (kind, reference id, the ERP numbers it "
    "was composed from) with casavi's link to it (appLink) as last read, in CASAVI_LINKS_DIR as "
    "casavi_links_<Mandant>.csv (the export's dialect) and .parquet, replaced atomically and only when they "
    "change. No personal data. An object created in this run gets its link from the next run's read.",
)
def casavi_links(
    context: dg.AssetExecutionContext,
    erp_export: ErpExport,
    snapshots: SnapshotStore,
    casavi_properties: pd.DataFrame,
    casavi_units: pd.DataFrame,
    casavi_contacts: pd.DataFrame,
) -> Iterator[dg.MaterializeResult]:
    mandant = context.partition_key
    if not erp_export.links_directory:
        context.log.info(f"Mandant {mandant}: CASAVI_LINKS_DIR is not set, so no links file is written")
        return
    mapped = {
        ObjectKind.PROPERTY: casavi_properties,
        ObjectKind.UNIT: casavi_units,
        ObjectKind.CONTACT: casavi_contacts,
    }
    directory = Path(erp_export.links_directory)
    try:
        with snapshots.open(mandant, read_only=True) as snapshot:
            written = write_links(snapshot, mapped, directory)
    except OSError as exc:
        raise dg.Failure(
            description=f"Mandant {mandant}: the links could not be written to {directory} "
            f"({exc.strerror or type(exc).__name__}): make CASAVI_LINKS_DIR a folder this process may write to, "
            "then rerun. The sync itself is done.",
            allow_retries=False,
        ) from None
    context.log.info(written.summary)
    if written.not_listed_yet:
        context.log.info(written.not_listed_yet)
    if written.missing_links:
        context.log.warning(written.missing_links)
    yield dg.MaterializeResult(metadata=_metadata(written))


defs = dg.Definitions(assets=[casavi_links])
