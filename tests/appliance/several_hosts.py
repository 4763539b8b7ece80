"""A config of several app hosts for the unit tier: the example's production, with more [[hosts]] beside its first,
the managed data and COS uploads several hosts need (the config refuses them otherwise)."""

from __future__ import annotations

from appliance.config import Config, load_config
from tests.certificates import issue_chain

SHARED = """
[environments.production.database]
host = "db.internal.example.com"
name = "appliance"
user = "appliance_app"
ca_file = "tencentdb-ca.pem"

[environments.production.redis]
host = "redis.internal.example.com"
ca_file = "tencentdb-ca.pem"

[environments.production.service]
artifact_storage = "cos"
artifact_cos_bucket = "agents-files-1250000000"
"""
METRICS_PASSWORD = "scrape-me"
SECRETS = "DATABASE_PASSWORD=db-secret\nMANAGED_REDIS_PASSWORD=redis-secret\nCOS_SECRET_ID=AKIDx\nCOS_SECRET_KEY=k\n"


def with_hosts(config: Config, *addresses: str, vpc: str = "", metrics_password: str = METRICS_PASSWORD) -> Config:
    """`config` (the example's, in a folder of its own) with one more production host per address: its CLB's pool.
    `vpc`: a private (VPC) address prefix, e.g. "10.0.0.", each host then gets one (.11 for the first, .12, ...).
    `metrics_password`: what the first host's Prometheus reads the others with."""
    first = config.settings.hosts[0]
    hosts = "".join(
        f'\n[[environments.production.hosts]]\naddress = "{address}"\nkey = "{first.key}"\n'
        + (f'private_address = "{vpc}{12 + index}"\n' if vpc else "")
        for index, address in enumerate(addresses)
    )
    if vpc:
        text = config.path.read_text(encoding="utf-8")
        marker = f'address = "{first.address}"\n'
        config.path.write_text(text.replace(marker, f'{marker}private_address = "{vpc}11"\n', 1), encoding="utf-8")
    (config.path.parent / "tencentdb-ca.pem").write_text(issue_chain("db.internal.example.com").root)
    with config.path.open("a", encoding="utf-8") as toml:
        toml.write(hosts + SHARED)
    with config.secrets_path.open("a", encoding="utf-8") as secrets:
        secrets.write(SECRETS + f"METRICS_PASSWORD={metrics_password}\n")
    return load_config(config.path, config.env)
