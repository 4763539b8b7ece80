"""A minimal Tencent COS object API for tests: `python -m tests.service.fakecos --port N`.

PUT/GET/DELETE /<key> on one in-memory bucket; requests must carry a COS signature header.
GET /_objects lists keys and sizes (for assertions). The real cos-python-sdk-v5 talks to it over HTTP
when configured with Scheme=http and Domain=127.0.0.1:N.
"""

from __future__ import annotations

import argparse
import hashlib

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_app() -> Starlette:
    objects: dict[str, bytes] = {}

    def error(status: int, code: str) -> Response:
        body = f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
        return Response(body, status_code=status, media_type="application/xml")

    async def obj(request: Request) -> Response:
        if "q-sign-algorithm=sha1" not in request.headers.get("authorization", ""):
            return error(403, "AccessDenied")
        key = request.path_params["key"]
        if request.method == "PUT":
            objects[key] = await request.body()
            return Response(headers={"ETag": f'"{hashlib.md5(objects[key]).hexdigest()}"'})  # noqa: S324 - an ETag
        if key not in objects:
            return error(404, "NoSuchKey")
        if request.method == "DELETE":
            del objects[key]
            return Response(status_code=204)
        return Response(objects[key], media_type="application/octet-stream")

    async def listing(request: Request) -> Response:
        return JSONResponse({key: len(data) for key, data in objects.items()})

    return Starlette(
        routes=[
            Route("/_objects", listing, methods=["GET"]),
            Route("/{key:path}", obj, methods=["GET", "PUT", "DELETE"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Tencent COS for tests")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
