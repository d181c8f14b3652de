"""Pure marketplace domain logic: no I/O, no framework imports, unit-tested in milliseconds."""
