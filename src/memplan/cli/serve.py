"""``memplan serve [--host 127.0.0.1] [--port 8000] [--open]``: the local web page.

The page and its JSON API (``memplan.web``) need the ``web`` extra (FastAPI, uvicorn, plotly);
they are imported only when this command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from memplan.cli.common import positive_int
from memplan.errors import SetupError

__all__ = ["is_loopback", "register", "run"]

EPILOG = """\
examples:
  memplan serve                 (then open http://127.0.0.1:8000/)
  memplan serve --port 8080 --open
  memplan serve --host 0.0.0.0  (reachable from other machines: no authentication)

The API answers POST /api/{params,train,infer,serve-capacity,time,sweep} with the CLI's --json;
its OpenAPI schema is at /docs.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page with charts of the same reports (needs the web extra)",
        description="Start the memplan web page and its JSON API on this machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: Any) -> int:
    try:
        import uvicorn

        from memplan.web.app import create_app
    except ImportError as exc:
        raise SetupError(
            f"memplan serve needs the web extra ({exc.name} is missing): "
            "pip install 'memplan[web]' (or make setup)"
        ) from None
    if args.port > 65535:
        raise SetupError(f"--port must be at most 65535, got {args.port}")
    if not is_loopback(args.host):
        print(
            f"memplan: warning: serving on {args.host}: anyone who can reach this machine can "
            "use the page (there is no authentication)",
            file=sys.stderr,
        )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{args.port}/"
    print(f"memplan: serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0
