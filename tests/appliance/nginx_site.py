"""`nginx -t` of a rendered site: Debian's nginx given a release's appliance.conf with its paths moved into a folder."""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_nginx_accepts(folder: Path, site: str, upstream: str, domain: str) -> str:
    """The rendered `site` (appliance.conf) and `upstream` (upstream.inc, the API moved to 127.0.0.1:8000) written
    into `folder` with a certificate for `domain`; `nginx -t` must accept them. Returns the site as written."""
    from tests.certificates import issue_chain

    chain = issue_chain(domain)
    (folder / "fullchain.pem").write_text(chain.bundle)
    (folder / "privkey.pem").write_text(chain.key)
    (folder / "upstream.inc").write_text(upstream.replace("api-v1:8000", "127.0.0.1:8000"))
    moved = site.replace("/etc/nginx/conf.d/", f"{folder}/").replace("/etc/appliance/certs/", f"{folder}/")
    (folder / "appliance.conf").write_text(moved)
    (folder / "nginx.conf").write_text(
        f"pid {folder}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  include /etc/nginx/mime.types;\n  include {folder}/appliance.conf;\n}}\n"
    )
    check = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(folder), "-c", str(folder / "nginx.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    return moved
