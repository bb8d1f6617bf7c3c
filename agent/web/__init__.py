"""The aiohttp application: probes, APIs and the dashboard."""
