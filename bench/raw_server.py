"""The framework limit: a bare Starlette app returning prepared bytes from memory.

    python bench/raw_server.py PORT BLOB_FILE
serves GET /blob (the file's bytes, read once at start) and GET /hello (a tiny JSON body).
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BLOB = Path(sys.argv[2]).read_bytes()
HELLO = b'{"hello":"world"}'


async def blob(request: Request) -> Response:
    return Response(BLOB, media_type="application/blosc")


async def hello(request: Request) -> Response:
    return Response(HELLO, media_type="application/json")


app = Starlette(routes=[Route("/blob", blob), Route("/hello", hello)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
