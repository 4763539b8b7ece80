"""A config of several app hosts for the unit tier: the example's, with more [[hosts]] beside the first."""

from __future__ import annotations

from appliance.config import Config


def with_hosts(config: Config, *addresses: str) -> Config:
    """`config` with one more app host per address (the first host's user, port and key): its load balancer's pool."""
    first = config.settings.hosts[0]
    hosts = [first, *(first.model_copy(update={"address": address}) for address in addresses)]
    return Config(config.path, config.env, config.environments, config.settings.model_copy(update={"hosts": hosts}))
