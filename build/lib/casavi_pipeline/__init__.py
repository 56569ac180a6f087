"""casavi_pipeline: keeps an ERP's master data (Stammdaten) in sync with casavi, per Mandant."""
