"""The test and demo harness of casavi_pipeline: what glues the pipeline to the casavi sandbox.

The sandbox (`casavi_sandbox`) is a stand-in for casavi that imports nothing from casavi_pipeline, so
it judges what the pipeline sends. What needs both lives here: the in-memory fake casavi client and its
Dagster resource (`fake`), the bodies an export maps to for seeding an account (`accounts`), the sample
ERP export and its generator (`sample_export/`, `sample`), the local setup (`local`) of `./run demo`
(`demo`) and `./run dev` (`dev`).
"""
