"""What aioflow tells the outside about itself: OpenTelemetry tracing and
Prometheus metrics."""
