"""The state store: leases, watermarks, dedupe, delivery log, key-value, heartbeats."""
