"""Dagster-operational helpers for casavi_pipeline's runs (no pipeline logic, no settings)."""
