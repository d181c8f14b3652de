"""The clinic's own store (party 0): cases, patient tokens, predictions, seats, diagnoses.

No other organisation reads or writes it: the marketplace learns of a case, and the clinic
of its seats and diagnosis, only through signed messages (outbox → inbox).
"""
