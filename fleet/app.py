"""fleet's built-in WSGI app: the Hello World of Node's cluster example, on Falcon.

It is what a fresh install serves, and the app the benchmarks compare. Health
checks are answered in front of every app by :mod:`fleet.health`, not here.
"""

from __future__ import annotations

import falcon


class HelloWorld:
    """``GET /`` answers ``Hello World!`` as text/plain."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Hello World!"


def create_app() -> falcon.App:  # type: ignore[type-arg]  # generic in falcon 4 only
    """Build the app; a function so tests get a fresh one."""
    app = falcon.App()
    app.add_route("/", HelloWorld())
    return app


app = create_app()
