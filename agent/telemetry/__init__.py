"""OpenTelemetry providers, the metric catalogue, structured logs and secret masking."""
