"""Mandanten are the partitions: one per configured Mandant number, known when the code location loads."""

import warnings

import dagster as dg

from casavi_pipeline.defs.resources import SETTINGS

# Partitioned asset checks (one per Mandant, so a check loads only its Mandant) are a preview API in
# Dagster 1.13; docs/operating.md ("Dagster's preview APIs") says so once, instead of a warning on every start.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

mandant_partitions = dg.StaticPartitionsDefinition(SETTINGS.mandanten)
