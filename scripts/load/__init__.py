"""The load and fault tests' parts: the system under test, its clients, the audit, the report.

``scripts/load_test.py`` and ``scripts/fault_test.py`` are the entry points; both put the
repository root on ``sys.path`` before importing this package.
"""
