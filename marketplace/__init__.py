"""The doctors' half of crypto-doctor: a blind second-opinion marketplace, its own organisation.

Follow a case by module name: ``messages`` (the contract with the clinic), ``intake`` (the
clinic's ``case.opened`` opens a priced, funded case), ``review`` (pool, claims, sealed votes,
disclosure, escalation), ``settlement`` (consensus, payout, reputation, research row),
``outbox`` (``seat.granted`` and ``case.settled`` for the clinic, in the same transaction),
``image_links`` (links to the clinic's viewer, which decides who sees an image), ``research``
(anonymized rows), ``doctors`` (accounts and the demo CLI), ``service`` (the :8081 process:
web app, ``POST /messages``, courier). Pure rules live in ``domain``; its own store in
``storage`` and ``ledger``. No patient data: tokens, images and failures stay at the clinic.
"""
