"""Where the server is and which key to send: a flag, else the environment (read when a command runs)."""

from __future__ import annotations

import argparse
import os

DEFAULT_SERVER = "http://127.0.0.1:8080"
SERVER_ENV = "D2V_SERVER_URL"
API_KEY_ENV = "D2V_API_KEY"
DEFAULT_GRPC = "127.0.0.1:8081"
GRPC_ENV = "D2V_GRPC_URL"


def server_url(args: argparse.Namespace) -> str:
    return args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def grpc_target(args: argparse.Namespace) -> str:
    """The gRPC ``host:port`` (the gateway's KServe v2 port, or Triton's)."""
    return getattr(args, "grpc_url", None) or os.environ.get(GRPC_ENV) or DEFAULT_GRPC


def api_key(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get(API_KEY_ENV) or None
