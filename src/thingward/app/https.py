"""The HTTPS listener: uvicorn with the platform's server certificate and TLS 1.2 as the floor, set in code."""

from __future__ import annotations

import ssl
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def https_server(app: FastAPI, host: str, port: int, cert_file: Path, key_file: Path) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    config.load()
    if config.ssl is None:
        raise RuntimeError("uvicorn built no TLS context; refusing to serve plain HTTP")
    # Do not rely on the system's OpenSSL policy for the floor: state it here.
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return uvicorn.Server(config)
