"""Mandanten are the partitions: one per configured Mandant number, known when the code location loads."""

import dagster as dg

from casavi_pipeline.defs.resources import SETTINGS

mandant_partitions = dg.StaticPartitionsDefinition(SETTINGS.mandanten)
