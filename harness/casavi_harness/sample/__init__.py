"""The sample ERP export generator: `python -m casavi_harness.sample --help`."""
