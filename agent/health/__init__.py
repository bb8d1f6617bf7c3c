"""Health checks, their scheduler, and the /health, /livez and /readyz answers."""
