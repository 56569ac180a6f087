"""The sample ERP export generator: `python -m casavi_pipeline.sample --help`."""
