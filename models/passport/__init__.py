"""Model passports: each served model version attested on chain by its owner.

``entry`` builds a version's schema-1 entry from the training run's provenance record (pure),
``registry`` mints, reads and verifies passports through :mod:`marketplace.ocean.passport`,
``python -m models.passport mint|show|verify|history`` is the command line.
"""
