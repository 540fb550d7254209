"""``python -m systemhealer.web [--port 8000]``: the web platform alone, without the HTTP API.

The service (``systemhealer serve``) mounts the same app at ``/``; this is for trying the page
or developing it.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from systemhealer.config import load_settings
from systemhealer.web.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m systemhealer.web", description=__doc__)
    parser.add_argument("--host", default=None, help="default: serving.host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", default=None, help="YAML config file")
    args = parser.parse_args()
    settings = load_settings(args.config)
    config_file = args.config or os.environ.get("SYSTEMHEALER_CONFIG")
    app = create_app(settings, config_file=config_file)
    uvicorn.run(app, host=args.host or settings.serving.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
