"""The sync's state: what casavi is known to hold, per casavi account and Mandant (see `store.py`)."""
