"""A local Tencent COS for tests: moto's S3 server does the storage, this shim speaks COS in front of it.

What the shim adds, because the real cos-python-sdk-v5 expects it and moto does not do it:
- it verifies COS `q-sign-algorithm=sha1` Authorization headers (a wrong SecretKey gets 403
  SignatureDoesNotMatch, an unknown SecretId 403 InvalidAccessKeyId), independently of the SDK's code;
- it maps COS virtual-host requests (`Host: BUCKET.cos.REGION.myqcloud.com`, sent to IP:port) to
  moto's path-style buckets;
- it sends response headers in the case COS uses (`Last-Modified`, `ETag`) and adds
  `x-cos-hash-crc64ecma` (CRC-64/ECMA-182 as COS computes it) to object and part responses;
- faults on demand (`POST /_fake/faults`, JSON): `{"fail_part": {"2": 1}}` answers the next upload
  of part 2 with one 503; `{"bad_crc": ["KEY"]}` reports a wrong CRC64 for that object;
  `{"deny_delete": "request" | "keys" | null}` refuses deletes with AccessDenied (a switch, not a policy);
- a custom domain (the SDK's `Domain=ADDRESS:PORT`, as the service's artifact storage uses it) reaches
  the default bucket, whose objects `GET /_fake/objects` lists as JSON (key → size);
- the COS-only `?referer` sub-resource (hotlink protection), stored by the shim itself (moto has none);
- bucket ACLs in COS's dialect: `x-cos-acl`/`x-cos-grant-*` become moto's `x-amz-*`, and answers name
  COS's group URIs (`http://cam.qcloud.com/groups/global/…`), from which the SDK reads its CannedACL.

Run it: `python -m tests.cosfake --bind 127.0.0.1 --port 9000 --secret-id ID --secret-key KEY --bucket NAME`
(every `--bucket` is created; the first is the default bucket).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import crcmod
import requests

# COS's multipart minimum is 1 MB (S3's is 5 MB); moto reads this when it is imported.
os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(1024 * 1024))

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
_CRC64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
_HEADER_CASE = {"last-modified": "Last-Modified", "etag": "ETag", "content-type": "Content-Type"}
# moto refuses anonymous reads; it does not check S3 signatures, so any S3 credential will do.
_MOTO_AUTH = {"Authorization": "AWS fake:fake"}
_S3_HEADER = re.compile(r"^x-cos-(?=acl$|grant-)", re.I)  # COS's ACL headers, in S3's words for moto
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


def crc64(data: bytes) -> str:
    """The CRC64 COS reports for `data`, as the decimal string COS sends."""
    return str(_CRC64(data))


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def expected_signature(secret_key: str, method: str, path: str, query: Mapping[str, str],
                       headers: Mapping[str, str], fields: Mapping[str, str]) -> str:  # fmt: skip
    """The q-signature COS computes for a request (COS docs, "Request signature")."""
    wanted_params = [name for name in fields.get("q-url-param-list", "").split(";") if name]
    wanted_headers = [name for name in fields.get("q-header-list", "").split(";") if name]
    lowered_query = {_encode(k).lower(): _encode(v) for k, v in query.items()}
    lowered_headers = {_encode(k).lower(): _encode(v) for k, v in headers.items()}
    params = "&".join(f"{k}={lowered_query.get(k, '')}" for k in sorted(wanted_params))
    signed = "&".join(f"{k}={lowered_headers.get(k, '')}" for k in sorted(wanted_headers))
    http_string = f"{method.lower()}\n{path}\n{params}\n{signed}\n"
    key_time = fields.get("q-key-time", "")
    string_to_sign = f"sha1\n{key_time}\n{hashlib.sha1(http_string.encode()).hexdigest()}\n"  # noqa: S324 - COS's algorithm
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode(), string_to_sign.encode(), hashlib.sha1).hexdigest()


@dataclass
class Faults:
    """Failures to inject, consumed as requests arrive."""

    fail_part: dict[int, int] = field(default_factory=dict)
    bad_crc: set[str] = field(default_factory=set)
    # Deletes refused with AccessDenied, as COS refuses a key whose CAM policy has no DeleteObject: "request"
    # (the whole multi-delete, and a single DELETE) or "keys" (200, each key an <Error>). Aborting an upload
    # stays allowed (the printed policy has AbortMultipartUpload). No policy is evaluated: a switch.
    deny_delete: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_part_failure(self, part: int) -> bool:
        with self.lock:
            left = self.fail_part.get(part, 0)
            if left > 0:
                self.fail_part[part] = left - 1
            return left > 0


@dataclass
class Shim:
    """The COS face: credentials it accepts, where moto listens, faults."""

    secret_id: str
    secret_key: str
    moto_url: str
    faults: Faults = field(default_factory=Faults)
    # Requests to a custom domain (CosConfig Domain=ADDRESS:PORT) name no bucket: they go to this one.
    default_bucket: str = ""
    # moto answers every upload's Initiated with one fixed date; the shim remembers the real ones.
    initiated: dict[str, str] = field(default_factory=dict)
    # A bucket's RefererConfiguration XML as last PUT (COS-only, so moto has nowhere to keep it).
    referers: dict[str, bytes] = field(default_factory=dict)


def _error(code: str, status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    body = (
        f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message><Resource>fake</Resource><RequestId>fake</RequestId>"
        "<TraceId>fake</TraceId></Error>"
    ).encode()
    return status, {"Content-Type": "application/xml", "x-cos-request-id": "fake"}, body


def handle(
    shim: Shim, method: str, target: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request through the shim: (status, headers, body)."""
    split = urlsplit(target)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    path = unquote(split.path)
    if path == "/_fake/objects" and method == "GET":  # for assertions: key → size in the default bucket
        listing = requests.get(f"{shim.moto_url}/{shim.default_bucket}", headers=_MOTO_AUTH, timeout=10).content
        found = re.findall(rb"<Key>([^<]*)</Key>.*?<Size>(\d+)</Size>", listing, flags=re.S)
        return 200, {"Content-Type": "application/json"}, json.dumps({k.decode(): int(n) for k, n in found}).encode()
    if path == "/_fake/faults" and method == "POST":
        wanted = json.loads(body or b"{}")
        with shim.faults.lock:
            shim.faults.fail_part.update({int(k): int(v) for k, v in wanted.get("fail_part", {}).items()})
            shim.faults.bad_crc.update(wanted.get("bad_crc", []))
            shim.faults.deny_delete = wanted.get("deny_delete", shim.faults.deny_delete)
        return 204, {}, b""
    lowered = {k.lower(): v for k, v in headers.items()}
    fields = dict(parse_qsl(lowered.get("authorization", ""), keep_blank_values=True))
    if fields.get("q-sign-algorithm") != "sha1":
        return _error("AccessDenied", 403, "Access Denied.")
    if fields.get("q-ak") != shim.secret_id:
        return _error("InvalidAccessKeyId", 403, "The access key Id format you provided is invalid.")
    # The SDK signs a Host it did not set itself as the URL's host name, without the port.
    bare_host = {**lowered, "host": lowered.get("host", "").rsplit(":", 1)[0]}
    candidates = {expected_signature(shim.secret_key, method, path, query, h, fields) for h in (lowered, bare_host)}
    if not any(hmac.compare_digest(wanted, fields.get("q-signature", "")) for wanted in candidates):
        return _error("SignatureDoesNotMatch", 403, "The calculated signature does not match.")
    host = lowered.get("host", "")
    bucket = host.split(".cos.")[0] if ".cos." in host else shim.default_bucket
    key = path.lstrip("/")
    if "partNumber" in query and method == "PUT" and shim.faults.take_part_failure(int(query["partNumber"])):
        return _error("ServiceUnavailable", 503, "Please reduce your request rate.")
    if "referer" in query and not key:
        return _referer(shim, method, bucket, body)
    if shim.faults.deny_delete and _deletes(method, key, query):
        return _denied_delete(shim.faults.deny_delete, body)
    forward = {
        _S3_HEADER.sub("x-amz-", k): v
        for k, v in headers.items()
        if k.lower() not in {"host", "authorization", "content-length"}
    }
    forward.update(_MOTO_AUTH)
    response = requests.request(
        method, f"{shim.moto_url}/{bucket}/{quote(key)}", params=query, headers=forward, data=body, timeout=60
    )
    if response.status_code >= 400:  # moto's S3 error → COS's (it names Resource and TraceId)
        code = re.search(rb"<Code>([^<]+)</Code>", response.content)
        return _error(code.group(1).decode() if code else "InternalError", response.status_code, "from moto")
    content = response.content
    if "acl" in query:
        content = content.replace(b"http://acs.amazonaws.com/groups/", b"http://cam.qcloud.com/groups/")
    if method == "POST" and "uploads" in query:
        upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", content)
        if upload_id:
            shim.initiated[upload_id.group(1).decode()] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    if method == "GET" and "uploads" in query:
        content = re.sub(rb"<Upload>.*?</Upload>", lambda m: _real_initiated(shim, m.group(0)), content, flags=re.S)
    out = {_HEADER_CASE.get(k.lower(), k): v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
    out["x-cos-request-id"] = "fake"
    if response.status_code < 300 and key and method in {"PUT", "POST", "GET", "HEAD"}:
        crc = _object_crc(shim, method, bucket, key, query, body, response.content)
        if crc is not None:
            out["x-cos-hash-crc64ecma"] = "1" + crc if key in shim.faults.bad_crc and "partNumber" not in query else crc
    return response.status_code, out, content


def _deletes(method: str, key: str, query: Mapping[str, str]) -> bool:
    """A DeleteObject or a DeleteMultipleObjects (not the abort of a multipart upload, nor a bucket's sub-resource)."""
    if method == "POST" and "delete" in query:
        return True
    return method == "DELETE" and bool(key) and "uploadId" not in query


def _denied_delete(mode: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    if mode != "keys" or not body:
        return _error("AccessDenied", 403, "Access Denied.")
    errors = "".join(
        f"<Error><Key>{k.decode()}</Key><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>"
        for k in re.findall(rb"<Key>([^<]*)</Key>", body)
    )
    xml = f"<?xml version='1.0' encoding='utf-8'?><DeleteResult>{errors}</DeleteResult>".encode()
    return 200, {"Content-Type": "application/xml", "x-cos-request-id": "fake"}, xml


def _referer(shim: Shim, method: str, bucket: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """PUT/GET/DELETE ?referer: kept as sent; a bucket that never had one answers an empty configuration."""
    if method == "PUT":
        shim.referers[bucket] = body
    elif method == "DELETE":
        shim.referers.pop(bucket, None)
    elif method == "GET":
        stored = shim.referers.get(bucket, b"<RefererConfiguration></RefererConfiguration>")
        return 200, {"Content-Type": "application/xml", "x-cos-request-id": "fake"}, stored
    return (204 if method == "DELETE" else 200), {"x-cos-request-id": "fake"}, b""


def _real_initiated(shim: Shim, upload: bytes) -> bytes:
    upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", upload)
    when = shim.initiated.get(upload_id.group(1).decode()) if upload_id else None
    if when is None:
        return upload
    return re.sub(rb"<Initiated>[^<]*</Initiated>", f"<Initiated>{when}</Initiated>".encode(), upload)


def _object_crc(shim: Shim, method: str, bucket: str, key: str, query: Mapping[str, str],
                body: bytes, answer: bytes) -> str | None:  # fmt: skip
    if method == "PUT" and "partNumber" in query:
        return crc64(body)
    if method == "PUT" and not query:
        return crc64(body)
    if method == "GET" and not query:
        return crc64(answer)
    if method == "HEAD" or (method == "POST" and "uploadId" in query):
        whole = requests.get(f"{shim.moto_url}/{bucket}/{quote(key)}", headers=_MOTO_AUTH, timeout=60)
        return crc64(whole.content) if whole.status_code == 200 else None
    return None


def make_handler(shim: Shim) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = handle(shim, self.command, self.path, dict(self.headers.items()), body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class FakeCos:
    """moto on a free loopback port plus the shim on `bind:port`; `start()` then `stop()`."""

    def __init__(self, bind: str, port: int, secret_id: str, secret_key: str, default_bucket: str = "") -> None:
        from moto.server import ThreadedMotoServer

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, moto_port = self.moto.get_host_and_port()
        self.shim = Shim(secret_id, secret_key, f"http://{host}:{moto_port}", default_bucket=default_bucket)
        self.server = ThreadingHTTPServer((bind, port), make_handler(self.shim))
        self.address = str(self.server.server_address[0])
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def create_bucket(self, bucket: str) -> None:
        """Buckets are made in the console for real COS; here, straight in moto."""
        requests.put(f"{self.shim.moto_url}/{bucket}", headers=_MOTO_AUTH, timeout=10).raise_for_status()

    def start(self) -> FakeCos:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.moto.stop()
