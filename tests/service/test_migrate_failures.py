"""The one line migrations print when they cannot get into the database (service.migrate.connection_failure), for
the URLs the appliance renders and the errors OpenSSL and asyncpg raise. The same lines from the real entry point
against a TLS-only PostgreSQL: tests/service/test_managed_data.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import asyncpg
import pytest

from service.migrate import connection_failure
from tests.appliance.test_managed_data import env_of, managed_config, rendered
from tests.certificates import issue_chain
from tests.conftest import example_config

pytestmark = pytest.mark.unit
SERVER = "db.internal.example.com"  # the name managed_config's database has, and its certificate
THE_CHAIN = issue_chain(SERVER)


def urls(tmp_path: Path) -> dict[str, str]:
    """The database URLs a release carries: the stack's own postgres (the example), a managed one's app role
    (api.env) and its migration role (migration.url)."""
    (tmp_path / "stack").mkdir()
    stack = rendered(example_config(tmp_path / "stack"))
    managed = rendered(managed_config(tmp_path, 'migration_user = "appliance_migrator"'))
    return {
        "stack": env_of(stack["api.env"][0])["DATABASE_URL"],
        "app": env_of(managed["api.env"][0])["DATABASE_URL"],
        "migration": managed["migration.url"][0].strip(),
    }


def refused_handshake(tmp_path: Path, trusted_root: str, connect_to: str) -> ssl.SSLCertVerificationError:
    """What OpenSSL raises in a client that trusts `trusted_root` and connects to `connect_to` while the server
    presents THE_CHAIN (for SERVER): a real handshake, in memory."""
    (tmp_path / "server.crt").write_text(THE_CHAIN.bundle)
    (tmp_path / "server.key").write_text(THE_CHAIN.key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client = ssl.create_default_context(cadata=trusted_root)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(to_client, to_server, server_hostname=connect_to)
    theirs = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(5):
        for side in (ours, theirs):
            try:
                side.do_handshake()
            except ssl.SSLCertVerificationError as refused:
                return refused
            except ssl.SSLWantReadError:
                pass  # the other side's bytes are not there yet
    raise AssertionError("the handshake was not refused")


def test_a_certificate_another_ca_signed_names_database_ca_file(tmp_path: Path) -> None:
    refused = refused_handshake(tmp_path, issue_chain(SERVER).root, SERVER)
    # A root of the same name that did not sign it: OpenSSL says "certificate signature failure".
    assert connection_failure(refused, urls(tmp_path)["app"], migration_role=False) == (
        f"the database's certificate did not verify against database.ca_file, {SERVER}:5432/appliance (tls "
        f"verify-full): {refused.verify_message}: set ca_file to the CA that signed it (the instance's SSL page in "
        "the console)"
    )


@pytest.mark.parametrize("address", ["10.0.0.12", "db.other.example.com"])
def test_a_certificate_for_another_name_names_database_host(tmp_path: Path, address: str) -> None:
    refused = refused_handshake(tmp_path, THE_CHAIN.root, address)
    line = connection_failure(refused, urls(tmp_path)["app"], migration_role=False) or ""
    assert line.startswith("the database's certificate does not name the address connected to"), line
    assert f"not valid for '{address}'" in line and line.endswith(
        ": set database.host to the address its certificate is issued for"
    )


def test_a_server_without_tls_is_its_own_line(tmp_path: Path) -> None:
    # asyncpg's own error when the server answers the TLS request with "N" (connect_utils.TLSUpgradeProto).
    rejected = ConnectionError(f'PostgreSQL server at "{SERVER}:5432" rejected SSL upgrade')
    assert connection_failure(rejected, urls(tmp_path)["app"], migration_role=False) == (
        f"the database speaks no TLS, {SERVER}:5432/appliance (tls verify-full): it refused the SSL upgrade: turn SSL "
        "on for the instance (its console's SSL page); plaintext is never tried"
    )


def test_a_refused_password_names_the_secret_that_holds_it(tmp_path: Path) -> None:
    refused = asyncpg.InvalidPasswordError('password authentication failed for user "appliance_app"')
    found = urls(tmp_path)
    fixes = {
        "stack": "POSTGRES_PASSWORD in secrets.env is not the one the database was created with; put the original back",
        "app": "set DATABASE_PASSWORD in secrets.env to database.user's password",
        "migration": "set DATABASE_MIGRATION_PASSWORD in secrets.env to database.migration_user's password",
    }
    for name, fix in fixes.items():
        line = connection_failure(refused, found[name], migration_role=name == "migration") or ""
        assert line.startswith("the database refused the password, ") and line.endswith(f"{refused}: {fix}"), name
    assert "postgres:5432/appliance (tls prefer)" in (connection_failure(refused, found["stack"], False) or "")


def test_other_failures_keep_their_traceback(tmp_path: Path) -> None:
    """A migration's own error, or a host that does not answer: no line of ours (the traceback's last line says it)."""
    url = urls(tmp_path)["app"]
    for failure in (
        asyncpg.InsufficientPrivilegeError("permission denied for schema public"),
        ConnectionRefusedError(),
    ):
        assert connection_failure(failure, url, migration_role=False) is None
