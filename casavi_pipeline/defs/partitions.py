"""Mandanten are the partitions: one per configured Mandant number, read from the settings at load time."""

import dagster as dg

from casavi_pipeline.settings import get_settings

mandant_partitions = dg.StaticPartitionsDefinition(get_settings().mandanten)
