"""A bare aiohttp handler with a fixed body: the baseline for the health endpoint benchmark."""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b'{"status":"ok"}'


async def _handler(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    """Serves GET / on 127.0.0.1:PORT (argv[1]) until killed."""
    app = web.Application()
    app.router.add_get("/", _handler)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
