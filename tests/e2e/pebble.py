"""Pebble (Let's Encrypt's test ACME server, Debian's `pebble` package) and its DNS, run on this machine.

The sandbox's certbot reaches Pebble's directory on the Docker bridge's gateway address (127.0.0.1 inside the
sandbox is the sandbox itself), over TLS with a certificate made here for that address. Pebble resolves the
test domain through pebble-challtestsrv's DNS, where the test points it: at 127.0.0.1, whose `http_port` is the
sandbox's published port 80, so the HTTP-01 challenge is really fetched through the sandbox's nginx; or at
127.0.0.2, where nothing listens, for an unreachable challenge.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tests.conftest import free_port

# Deterministic: Pebble rejects 5% of good nonces and reuses half of the valid authorizations by default, so a
# failed challenge could pass on a reused one, and a test would fail one run in twenty.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
UNREACHABLE = "127.0.0.2"  # loopback, but nothing listens there


@dataclass
class Pebble:
    """A running Pebble with its DNS; `stop()` ends exactly the two processes it started."""

    folder: Path
    address: str  # where the sandbox reaches the ACME directory
    http_port: int  # where Pebble fetches HTTP-01 challenges (the sandbox's published port 80)
    acme_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_management_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://{self.address}:{self.acme_port}/dir"

    @property
    def tls_ca_file(self) -> Path:
        """The certificate Pebble's own HTTPS presents (self-signed): the CA certbot must trust for it."""
        return self.folder / "pebble-tls.pem"

    def start(self) -> None:
        key = self.folder / "pebble-tls-key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "2", "-subj", "/CN=pebble test ACME server",
                "-addext", f"subjectAltName=IP:{self.address},IP:127.0.0.1",
                "-keyout", str(key), "-out", str(self.tls_ca_file),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        config = {
            "pebble": {
                "listenAddress": f"{self.address}:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.tls_ca_file),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": free_port(),  # TLS-ALPN-01 is not used
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.folder / "pebble.json").write_text(json.dumps(config))
        dns = [
            "pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}",
            "-management", f"127.0.0.1:{self.dns_management_port}",
            # Only names the test adds resolve; no challenge servers of its own.
            "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "", "-defaultIPv6", "",
        ]  # fmt: skip
        self._spawn("challtestsrv", dns)
        self._spawn(
            "pebble",
            ["pebble", "-config", str(self.folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._get(self.directory)
                self._post_dns("clear-a", {"host": "ready.test."})
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"Pebble did not start: {self.log()}") from None
                time.sleep(0.3)

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **PEBBLE_ENV})
            )

    def log(self) -> str:
        return "\n".join((self.folder / f"{name}.log").read_text() for name in ("challtestsrv", "pebble"))

    def point(self, domain: str, address: str) -> None:
        """The domain's DNS A record, as Pebble's validation sees it."""
        self._post_dns("clear-a", {"host": f"{domain}."})
        self._post_dns("add-a", {"host": f"{domain}.", "addresses": [address]})

    def _post_dns(self, path: str, body: dict[str, object]) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.dns_management_port}/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback, our own server
            assert answer.status == 200, path

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:  # noqa: S310 - https, loopback
            return bytes(answer.read())

    def issuer(self, kind: str) -> x509.Certificate:
        """The certificate Pebble issues with now: kind "roots" or "intermediates" (made anew at each start)."""
        return x509.load_pem_x509_certificate(self._get(f"https://127.0.0.1:{self.management_port}/{kind}/0"))

    def stop(self) -> None:
        """End the processes started so far (also after a failed `start`)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
