"""The seven ERP assets: one per export file, partitioned by Mandant, validated by pandera on read.

They are read in one step (a multi-asset over the export contract, `erp.contract.ENTITIES`): every file
is read the same way, the contract is written down once, and a broken delivery (a missing Mandant
folder, say) fails once with one message instead of seven times. The lineage still shows seven assets.
"""

import dagster as dg

from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import ErpExport
from casavi_pipeline.erp.contract import ENTITIES, Entity
from casavi_pipeline.erp.errors import ErpExportError

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
            description=f"{entity.description}. Read from `<ERP_EXPORT_DIR>/<Mandant>/{entity.file_name}`.",
            metadata={"dagster/column_schema": _column_schema(entity), "key": ", ".join(entity.key)},
        )
        for entity in ENTITIES
    },
    partitions_def=mandant_partitions,
)
def erp_export(context: dg.AssetExecutionContext, erp_export: ErpExport):
    for entity in ENTITIES:
        try:
            table = erp_export.read(context.partition_key, entity)
        except ErpExportError as exc:
            # The message already names file, row, key and what to fix; no traceback is needed.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        yield dg.Output(
            table.frame,
            output_name=entity.name,
            metadata={
                "dagster/row_count": table.row_count,
                "path": dg.MetadataValue.path(str(table.path)),
                "modified_at": dg.MetadataValue.timestamp(table.modified_at),
            },
        )


erp_assets = [erp_export]

defs = dg.Definitions(assets=erp_assets)
