"""The seven ERP assets: one per export file, partitioned by Mandant, validated by pandera on read.

They are read in one step (a multi-asset over the export contract, `erp.contract.ENTITIES`): every file
is read the same way, the contract is written down once, and a broken delivery (a missing Mandant
folder, say) fails once with one message instead of seven times. The lineage still shows seven assets.
"""

import contextlib

import dagster as dg

from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import ErpExport
from casavi_pipeline.erp.contract import ENTITIES, Entity
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.mapping_file import MappingFileError

_DAGSTER_TYPES = {"string": "string", "date": "date (YYYY-MM-DD)", "decimal": "float"}


def _column_schema(entity: Entity) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name,
                _DAGSTER_TYPES[c.type.value],
                description=c.description or None,
                constraints=dg.TableColumnConstraints(
                    nullable=not c.not_null, unique=entity.key == (c.name,)
                ),
            )
            for c in entity.columns
        ]
    )


@dg.multi_asset(
    name="erp_export",
    outs={
        entity.name: dg.AssetOut(
            group_name="erp",
            kinds={"csv", "pandas"},
            description=f"{entity.description}. Read from `<ERP_EXPORT_DIR>/<Mandant>/{entity.file_name}`, "
            f"or with ERP_SOURCE_URL from the table/view `{entity.name}` (docs/erp-sources.md).",
            metadata={"dagster/column_schema": _column_schema(entity), "key": ", ".join(entity.key)},
        )
        for entity in ENTITIES
    },
    partitions_def=mandant_partitions,
)
def erp_export(context: dg.AssetExecutionContext, erp_export: ErpExport):
    try:
        tables = erp_export.source().read(context.partition_key, ENTITIES)
        with contextlib.closing(tables):  # a database source holds its transaction until closed
            for entity, table in zip(ENTITIES, tables, strict=True):
                metadata = {"dagster/row_count": table.row_count, "source": table.origin}
                if table.modified_at is not None:
                    metadata["modified_at"] = dg.MetadataValue.timestamp(table.modified_at)
                yield dg.Output(table.frame, output_name=entity.name, metadata=metadata)
    except (ErpExportError, MappingFileError) as exc:
        # The message already names file (or table), row, key and what to fix; no traceback is needed.
        raise dg.Failure(description=str(exc), allow_retries=False) from None


erp_assets = [erp_export]

defs = dg.Definitions(assets=erp_assets)
