"""The seven ERP assets: one per export file, partitioned by Mandant, validated by pandera on read.

One factory over the export contract (`erp.contract.ENTITIES`), so every file is read the same way
and the contract is written down once.
"""

import dagster as dg
import pandas as pd

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
                constraints=dg.TableColumnConstraints(
                    nullable=not c.not_null, unique=entity.key == (c.name,)
                ),
            )
            for c in entity.columns
        ]
    )


def _erp_asset(entity: Entity) -> dg.AssetsDefinition:
    @dg.asset(
        name=entity.name,
        partitions_def=mandant_partitions,
        group_name="erp",
        kinds={"csv", "pandas"},
        description=f"{entity.description}. Read from `<ERP_EXPORT_DIR>/<Mandant>/{entity.file_name}`.",
        metadata={"dagster/column_schema": _column_schema(entity), "key": ", ".join(entity.key)},
    )
    def _read(context: dg.AssetExecutionContext, erp_export: ErpExport) -> dg.Output[pd.DataFrame]:
        try:
            table = erp_export.read(context.partition_key, entity)
        except ErpExportError as exc:
            # The message already names file, row, key and what to fix; no traceback is needed.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        return dg.Output(
            table.frame,
            metadata={
                "dagster/row_count": table.row_count,
                "path": dg.MetadataValue.path(str(table.path)),
                "modified_at": dg.MetadataValue.timestamp(table.modified_at),
            },
        )

    return _read


erp_assets = [_erp_asset(entity) for entity in ENTITIES]

defs = dg.Definitions(assets=erp_assets)
