#!/usr/bin/env bash
# The main job, from a fresh clone to the appliance deployed in a local sandbox CVM; it ends by
# printing the URL it serves on.
# Each stage is one line: prerequisites, the project, the sandbox, bootstrap, deploy.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-prereqs.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
.venv/bin/inv sandbox.up
.venv/bin/inv bootstrap --config sandbox.toml
.venv/bin/inv deploy --config sandbox.toml

# A login for the web console, made through the API over TLS (trusting the appliance's own CA, saved for
# the browser too). The password is kept in a 0600 file so that a re-run prints the same login; a new
# sandbox gets the user again.
.venv/bin/python - <<'PY'
import json, os, secrets, ssl, urllib.error, urllib.request
from pathlib import Path
from appliance.config import load_config
from appliance.remote import open_host
from appliance.render import site_origin

config = load_config(Path("sandbox.toml"))
with open_host(config) as host:
    ca = host.run("cat /opt/appliance/shared/certs/ca.pem").stdout
Path(".sandbox/ca.pem").write_text(ca)
tls = ssl.create_default_context(cadata=ca)
saved = Path(".sandbox/console-login.json")
if not saved.exists():
    fresh = {"email": f"demo-{secrets.token_hex(3)}@example.test", "password": secrets.token_urlsafe(12)}
    with os.fdopen(os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(fresh, out)
login = json.loads(saved.read_text())
origin = site_origin(config).rstrip("/")

def post(path: str) -> int:
    request = urllib.request.Request(origin + path, json.dumps(login).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=tls, timeout=15) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code

if post("/api/auth/register") not in (201, 409) or post("/api/auth/login") != 200:
    raise SystemExit(f"quickstart: the console login in {saved} does not work; delete that file and run again")
print("console CA (import it into a browser to trust the console): .sandbox/ca.pem")
print(f"console: {origin}/  login: {login['email']} / {login['password']}")
PY
