"""The sample ERP export generator: `python -m casavi_sandbox.sample --help`."""
