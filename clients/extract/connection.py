"""Where the server is and which key to send: a flag, else the environment (read when a command runs)."""

from __future__ import annotations

import argparse
import os

DEFAULT_SERVER = "http://127.0.0.1:8080"
SERVER_ENV = "D2V_SERVER_URL"
API_KEY_ENV = "D2V_API_KEY"


def server_url(args: argparse.Namespace) -> str:
    return args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def api_key(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get(API_KEY_ENV) or None
