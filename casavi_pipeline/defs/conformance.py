"""`casavi_conformance`: `casavi-pipeline check-casavi` from the Dagster UI, one run for the whole account.

Not partitioned: one casavi account serves every Mandant. It uses the code location's own `casavi`
resource (URL and credentials from the settings) and separator. A contradiction or an account that
cannot be checked fails the run with the same one-line report the command prints last; the full
report (field names and counts only) is in the op's log either way.
"""

import dagster as dg
from pydantic import Field

from casavi_pipeline.casavi import conformance
from casavi_pipeline.defs.failures import record_failure_reason
from casavi_pipeline.defs.resources import CasaviResource, SyncPolicy


class ConformanceConfig(dg.Config):
    write_test: bool = Field(
        default=False,
        description="also create, read back and delete one property, unit and contact under the reserved "
        f"reference-id prefix '{conformance.RESERVED_PREFIX}' (for a casavi TEST account only)",
    )


@dg.op(
    description="Compare the casavi account with casavi_pipeline's model of its API (read-only by default)."
)
def check_casavi(
    context: dg.OpExecutionContext, config: ConformanceConfig, casavi: CasaviResource, sync_policy: SyncPolicy
) -> dg.Output[None]:
    with casavi.get_client() as client:
        report = conformance.check_account(
            client, separator=sync_policy.id_separator, write_test=config.write_test
        )
    context.log.info("\n".join(report.lines()))
    metadata = {
        "report": dg.MetadataValue.md("```\n" + "\n".join(report.lines()) + "\n```"),
        "contradictions": len(report.all_contradictions),
        "requests": report.requests,
        "writes": report.writes,
    }
    if report.exit_code != conformance.MATCHES:
        raise dg.Failure(description=report.summary, metadata=metadata, allow_retries=False)
    return dg.Output(None, metadata=metadata)


@dg.job(
    hooks={record_failure_reason},
    description="casavi-pipeline check-casavi: does the casavi account match the model? Run it before the "
    "first sync (docs/connecting-to-casavi.md).",
)
def casavi_conformance() -> None:
    check_casavi()


defs = dg.Definitions(jobs=[casavi_conformance])
