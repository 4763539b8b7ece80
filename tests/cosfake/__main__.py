"""`python -m tests.cosfake --bind ADDRESS --port N --secret-id ID --secret-key KEY [--bucket NAME …]`."""

from __future__ import annotations

import argparse
import signal
import threading

from tests.cosfake import FakeCos


def main() -> None:
    parser = argparse.ArgumentParser(description="a local Tencent COS (moto behind a COS shim) for tests")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-id", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--bucket", action="append", default=[])
    args = parser.parse_args()
    fake = FakeCos(args.bind, args.port, args.secret_id, args.secret_key, (args.bucket or [""])[0])
    for bucket in args.bucket:
        fake.create_bucket(bucket)
    fake.start()
    print(f"fake COS on {fake.address}:{fake.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
