"""The doctors' half of crypto-doctor: a blind second-opinion marketplace.

Follow a case by module name: ``cases`` (party 0 records submission and prediction),
``review`` (pool, claims, sealed votes, disclosure, escalation), ``settlement``
(consensus, payout, reputation, research row), ``research`` (anonymized rows),
``doctors`` (accounts and the demo CLI), ``service`` (the :8081 web app).
Pure rules live in ``domain``; the database adapter in ``storage`` and ``ledger``.
"""
