"""The floor a Python proxy hop has on this machine: aiohttp's server and pooled client, nothing else.

`python -m bench.bare_proxy PORT UPSTREAM` forwards every POST to UPSTREAM (same path and body) and
answers with what came back. No auth, limits, accounting or header rules: bench/auth_overhead.py runs it
beside the router so the router's CPU per request can be read against what the bare hop costs here.
"""

from __future__ import annotations

import sys

from aiohttp import ClientSession, TCPConnector, web


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]

    async def session(app: web.Application) -> object:
        app["client"] = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
        yield
        await app["client"].close()

    async def forward(request: web.Request) -> web.Response:
        async with request.app["client"].post(upstream + request.path, data=await request.read(),
                                              headers={"content-type": request.content_type}) as answer:
            return web.Response(body=await answer.read(), status=answer.status,
                                content_type=answer.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
