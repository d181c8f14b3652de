"""Process plumbing every service shares: settings from flags/env, ports, HTTP errors, metrics."""
