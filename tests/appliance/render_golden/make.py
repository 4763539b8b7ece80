"""Regenerate the `inv render` goldens: run deliberately, against the commit whose output is the reference.

    git worktree add /tmp/render-base COMMIT
    cd /tmp/render-base && PYTHONPATH=. /work/main/.venv/bin/python /work/main/tests/appliance/render_golden/make.py

(run from the worktree, so `appliance` is imported from it). Each case's render (the example config's
environments, the sandbox config; copies kept here, so an edit of the example is not a render change) is
written as one JSON file, {host path: [mode, content]}; `test_render_golden.py` renders today's code and
compares byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (case, config file, environment): every environment of the example, and the sandbox's config.
CASES = (
    ("example-production", HERE / "example.toml", "production"),
    ("example-staging", HERE / "example.toml", "staging"),
    ("sandbox", HERE / "sandbox-config.toml", "sandbox"),
)
# Fixed generated secrets: render masks them, but the files must not depend on a random draw.
SECRETS = "POSTGRES_PASSWORD=p\nREDIS_PASSWORD=r\nJWT_SECRET=j\n"


def render_case(config_file: Path, env: str) -> dict[str, list[object]]:
    """What `inv render --env ENV` writes for `config_file`, as {host path: [mode, content]}."""
    from appliance import render as rendering
    from appliance.bootstrap import bootstrap_files
    from appliance.config import load_config
    from appliance.secrets import ensure_generated, load_secrets

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config = work / "appliance.toml"
        shutil.copy(config_file, config)
        loaded = load_config(config, env)
        loaded.secrets_path.parent.mkdir(parents=True, exist_ok=True)
        loaded.secrets_path.write_text(SECRETS, encoding="utf-8")
        loaded.secrets_path.chmod(0o600)
        ensure_generated(loaded.secrets_path, environ={})
        secrets = load_secrets(loaded.secrets_path, environ={})
        files = rendering.release_files(loaded, secrets, "preview", reveal=False) + bootstrap_files(loaded)
        out = work / "out"
        written = rendering.write_tree(files, out)
        return {
            "/" + str(path.relative_to(out)): [oct(path.stat().st_mode & 0o7777), path.read_text(encoding="utf-8")]
            for path in sorted(written)
        }


def main() -> None:
    os.environ.pop("APPLIANCE_CONFIG", None)
    for case, config_file, env in CASES:
        rendered = render_case(config_file, env)
        (HERE / f"{case}.json").write_text(json.dumps(rendered, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        sys.stdout.write(f"{case}: {len(rendered)} files\n")


if __name__ == "__main__":
    main()
