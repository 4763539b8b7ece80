"""cvm-appliance tasks: `inv --list` for the table of contents, `inv --help TASK` for a task's flags."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context

from appliance import cos_setup, drain, drill_schedule, log_lines, views
from appliance import llm_check as llm_keys
from appliance import render as rendering
from appliance import sandbox as sandboxes
from appliance import users as accounts
from appliance.backup import operate as backups_edge
from appliance.bootstrap import bootstrap, bootstrap_files, tls
from appliance.build import build_api_image, default_version
from appliance.cli import (
    COMMON_HELP,
    VERBOSE_HELP,
    OperatorTask,
    host_task,
    load,
    one_line_errors,
    print_outcome,
    print_outcomes,
    task,
)
from appliance.config import Config
from appliance.console_login import console_login
from appliance.deploy import deploy as deploy_release
from appliance.deploy import deploy_secrets, required_secrets
from appliance.deploy import rollback as rollback_release
from appliance.errors import ConfigError, StepFailed
from appliance.facts import gather_facts
from appliance.fleet import deploy_hosts, rollback_hosts
from appliance.live import console, step_lines
from appliance.private_ca import operator_ca
from appliance.procedure import break_lock
from appliance.progress import TransferProgress
from appliance.releases import current_release
from appliance.remote import open_host
from appliance.render import api_image, site_origin
from appliance.rollout import HostOutcome, failed_outcome, fan_out
from appliance.secrets import ensure_generated, load_secrets

WAIT_HELP = "if another deploy or rollback holds the host's lock, wait for it (up to 30 min)"


@host_task()
def config(c: Context, loaded: Config) -> None:
    """Validate the config file and show the chosen environment's settings (secrets masked)."""
    secrets = load_secrets(loaded.secrets_path)
    rendering.check_artifact_key(loaded, secrets)
    print(f"{loaded.path}: valid; environments: {', '.join(loaded.environments)}; using {loaded.env}")
    print(loaded.settings.model_dump_json(indent=2))
    known = ", ".join(f"{name}={value}" for name, value in sorted(secrets.values.items())) or "none"
    print(f"secrets from {secrets.source} and the environment: {known}")
    missing = [name for name in required_secrets(loaded.settings) if not secrets.get(name)]
    if missing:
        print(
            f"warning: the next inv deploy will refuse to start without {', '.join(missing)}: "
            f"set them in {secrets.source} (mode 0600) or in the environment"
        )


@host_task(
    help={
        "out": "folder to write into; files land at their host paths below it",
        "version": "release name used in paths and image tags",
        "reveal": "write secret values instead of masks (the files are then sensitive)",
    }
)
def render(c: Context, loaded: Config, out: str, version: str = "preview", reveal: bool = False) -> None:
    """Write every file that would land on a host for this config, to read before deploying."""
    generated = ensure_generated(loaded.secrets_path)
    if generated:
        print(f"generated {', '.join(generated)} into {loaded.secrets_path} (mode 0600): keep it, deploys use it")
    secrets = load_secrets(loaded.secrets_path)
    files = rendering.release_files(loaded, secrets, version, reveal=reveal) + bootstrap_files(loaded)
    for path in rendering.write_tree(files, Path(out)):
        print(path)


@host_task()
def facts(c: Context, loaded: Config) -> None:
    """Connect to each host and show what it is: OS, CPU, memory, disk, Docker and Compose."""
    for host in loaded.app_hosts():
        with open_host(host) as remote:
            print(f"{host.settings.hosts[0].target}: {gather_facts(remote, host.settings.base_dir).summary()}")


@host_task(
    name="bootstrap",
    help={
        "check": "show what would change; change nothing",
        "diff": "show a unified diff of each managed file that would change (secrets masked)",
        "verbose": VERBOSE_HELP,
    },
)
def bootstrap_host(c: Context, loaded: Config, check: bool = False, diff: bool = False, verbose: bool = False) -> None:
    """Turn fresh Ubuntu/Debian CVMs into hardened Docker hosts (several at once); run again after config changes."""
    hosts = loaded.app_hosts()
    target = ", ".join(host.settings.hosts[0].target for host in hosts)
    if loaded.settings.host.ssh_open_to_all:
        print(f"warning: SSH on {target} stays open to any address: set host.ssh_allow_from to your networks")
    if len(hosts) > 1:
        if not check:
            one_private_ca(loaded)
        with step_lines(verbose):
            outcomes = fan_out(
                [(label_of(host), functools.partial(bootstrap_one, host, check, diff)) for host in hosts]
            )
        print_outcomes(outcomes, "bootstrap", "bootstrap")
        return
    with step_lines(verbose):
        facts, results = bootstrap(hosts[0], check=check, diff=print if diff else None)
    print_outcome(results, f"{target}: {facts.summary()}", target)


def one_private_ca(loaded: Config) -> None:
    """tls.mode "self-signed" on several hosts: the CA made (or remade for a changed list of hosts) here, once,
    before the hosts' threads, each of which would otherwise make its own and sign its host's leaf with it."""
    if loaded.settings.tls.mode != "self-signed":
        return
    ca, now = operator_ca(loaded), datetime.now(timezone.utc)
    new = ca.why_new(now)
    ca.ensure(now)
    if new:
        print(new)


def label_of(host: Config) -> str:
    """The name reports give the host a per-host config acts on (Config.app_hosts)."""
    return host.settings.hosts[0].label


def bootstrap_one(host: Config, check: bool, diff: bool) -> HostOutcome:
    """One of several hosts' bootstrap, in its own thread (appliance/rollout.py's fan_out)."""
    label = label_of(host)

    def show(text: str) -> None:
        print(f"[{label}]\n{text}")

    facts, results = bootstrap(host, check=check, diff=show if diff else None)
    outcome = failed_outcome(label, results)
    return dataclasses.replace(outcome, summary=f"{host.settings.hosts[0].target}: {facts.summary()}")


@host_task(
    help={
        "version": "release name (default: UTC time and git commit, e.g. 20261123-170102-3f9c2ab)",
        "image": "an API image already in the local engine, instead of building one",
        "check": "show what would change; change nothing (builds nothing)",
        "wait": WAIT_HELP,
        "verbose": VERBOSE_HELP,
    }
)
def deploy(
    c: Context,
    loaded: Config,
    version: str | None = None,
    image: str | None = None,
    check: bool = False,
    wait: bool = False,
    verbose: bool = False,
) -> None:
    """Build the API image and put a release on the host; the old one serves until the new one is healthy."""
    version = version or default_version()
    deploy_secrets(loaded)  # a missing secret is one line now, not after a build of minutes
    if image is None and not check:
        print(f"building {api_image(loaded.settings, version)}")
        image = build_api_image(loaded, version)
    if len(loaded.app_hosts()) > 1:
        with step_lines(verbose), TransferProgress() as streamed:
            image = image or api_image(loaded.settings, version)
            outcomes = deploy_hosts(loaded, image, version, check=check, progress=streamed.update, wait=wait)
        print_outcomes(outcomes, f"release {version}", f"deploy of {version}")
        if not check:
            print(f"release {version} is serving on {len(outcomes)} hosts: {site_origin(loaded)}/")
        return
    loaded = loaded.app_hosts()[0]
    target = loaded.settings.hosts[0].target
    # The archive transport's stream reports through the executor's progress callback: bars like the layers'.
    with step_lines(verbose), TransferProgress() as streamed:
        results = deploy_release(
            loaded, image or api_image(loaded.settings, version), version, check, streamed.update, wait
        )
    print_outcome(results, f"{target}: release {version}", target)
    if not check:
        print(f"{target}: release {version} is serving: {site_origin(loaded)}/")


@host_task(
    help={
        "to": "a kept release to serve (default: the one that served before the current one)",
        "check": "show what would change; change nothing",
        "wait": WAIT_HELP,
        "verbose": VERBOSE_HELP,
    }
)
def rollback(
    c: Context, loaded: Config, to: str | None = None, check: bool = False, wait: bool = False, verbose: bool = False
) -> None:
    """Serve an earlier release again through the same health-gated switch (no image build, no migration); with
    several hosts, on each of them, the first one first."""
    if len(loaded.app_hosts()) > 1:
        with step_lines(verbose):
            outcomes = rollback_hosts(loaded, to, check=check, wait=wait)
        print_outcomes(outcomes, "rollback", "rollback")
        return
    loaded = loaded.app_hosts()[0]
    target = loaded.settings.hosts[0].target
    with step_lines(verbose):
        results = rollback_release(loaded, to, check, wait)
    print_outcome(results, f"{target}: rollback", target)


@host_task()
def releases(c: Context, loaded: Config) -> None:
    """List the releases on each host, most recently served first, with their last deploy/rollback result."""
    hosts = loaded.app_hosts()
    for host in hosts:
        with open_host(host) as remote:
            rows = views.release_rows(remote.run(views.releases_probe(host.settings)).stdout)
        print(views.host_heading(host.settings, len(hosts)) + views.releases_table(rows))


@host_task(help={"watch": "redraw the monitoring screen (scripts/monitor.sh) every N seconds until Ctrl-C"})
def status(c: Context, loaded: Config, watch: int = 0) -> None:
    """Show each host's containers, current release's health, disk, memory and the monitoring screen."""
    hosts = loaded.app_hosts()
    if watch > 0:
        if not loaded.settings.monitoring.enabled:
            raise ConfigError(f"{loaded.path}: --watch needs monitoring.enabled (it reads the host's Prometheus)")
        with open_host(hosts[0]) as remote:  # several hosts: the first one's, unless --host picks another
            screen = views.monitor_command(loaded.settings.base_dir)
            watch_screen(lambda: remote.run(screen).stdout, watch)
        return
    for host in hosts:
        with open_host(host) as remote:
            current = current_release(remote, host.settings)
            print(views.host_heading(host.settings, len(hosts)), end="")
            print(f"{host.settings.hosts[0].target}: release {current.version if current else '(none deployed)'}")
            for heading, command in views.status_sections(host.settings, current):
                print(f"\n== {heading}\n{remote.run(command).stdout.rstrip()}")


def watch_screen(screen: Callable[[], str], seconds: int) -> None:
    """Clear the terminal and print `screen()` every `seconds` until Ctrl-C."""
    try:
        while True:
            text = screen()
            sys.stdout.write("\033[H\033[2J" + text)
            sys.stdout.flush()
            time.sleep(seconds)
    except KeyboardInterrupt:
        print()


@host_task(
    help={
        "service": f"one of: {', '.join(views.SERVICES)}",
        "follow": "keep printing new lines until Ctrl-C; moves to the new API container after a deploy or rollback",
        "lines": f"how many recent lines to show first (default: {log_lines.DEFAULT_LINES}, or all since --since)",
        "json": "the lines as the service wrote them (JSON for the API), without Docker's time",
        "grep": "only the lines matching this regular expression (as shown, e.g. ERROR)",
        "since": "only lines from this long ago (10m, 2h, 1h30m) or this time (2026-12-01T10:00, your zone)",
    }
)
def logs(
    c: Context,
    loaded: Config,
    service: str = "api",
    follow: bool = False,
    lines: int = 0,
    json: bool = False,
    grep: str | None = None,
    since: str | None = None,
) -> None:
    """Show a service's log lines from the host: time, level, request id, message (secret values masked)."""
    if service not in views.SERVICES:
        raise ConfigError(f"--service: {service!r} is not one of {', '.join(views.SERVICES)}")
    command = log_lines.logs_command(
        loaded.settings, service, follow, lines, log_lines.docker_since(since) if since else None
    )
    secrets = load_secrets(loaded.secrets_path)
    hosts = loaded.app_hosts()
    if follow and len(hosts) > 1:
        names = ", ".join(label_of(host) for host in hosts)
        raise ConfigError(f"--follow reads one host's lines: pick one with --host NAME ({names})")
    for host in hosts:
        print(views.host_heading(host.settings, len(hosts)), end="")
        printer = log_lines.LogPrinter(console(), secrets.redact, raw=json, grep=grep)
        target = host.settings.hosts[0].target
        with open_host(host) as remote:
            status = remote.follow(command, str, printer)  # the printer masks whole lines
            printer.end()
        if status == log_lines.NO_CONTAINER:
            raise StepFailed(f"{target}: no {service} container: deploy first (inv deploy), or enable the service")


@host_task(name="break")
def lock_break(c: Context, loaded: Config) -> None:
    """Remove a deploy lock left by a deploy that died (on each host); the audit log records who broke whose lock."""
    for host in loaded.app_hosts():
        print(break_lock(host))


@host_task(
    name="renew",
    help={
        "force": "renew now even if the certificate is not due (ACME: certbot --force-renewal)",
        "check": "show whether a certificate would be issued; change nothing",
        "verbose": VERBOSE_HELP,
    },
)
def tls_renew(c: Context, loaded: Config, force: bool = False, check: bool = False, verbose: bool = False) -> None:
    """The site's certificate, issued or renewed when due (30 days) or forced: ACME, or the private CA (on each host,
    one after another)."""
    hosts = loaded.app_hosts()
    if len(hosts) > 1:
        outcomes = []
        with step_lines(verbose):
            for host in hosts:
                results = tls.renew(host, force=force, check=check)
                outcomes.append(failed_outcome(label_of(host), results))
        print_outcomes(outcomes, f"TLS certificate for {tls.site_name(loaded.settings)}", "tls.renew")
        return
    loaded = hosts[0]
    target = loaded.settings.hosts[0].target
    name = tls.site_name(loaded.settings)
    with step_lines(verbose):
        results = tls.renew(loaded, force=force, check=check)
    print_outcome(results, f"{target}: TLS certificate for {name}", target)


SANDBOX_HELP = {
    "os": "the sandbox's Debian release: bookworm (12, the default) or trixie (13); "
    "each has its own default name, ports and config file, so both can run at once",
    "name": "sandbox name; containers, volumes and files are named after it (default: after --os)",
    "ssh_port": "port on 127.0.0.1 for SSH (0: any free port; default: after --os)",
    "http_port": "port on 127.0.0.1 for the sandbox's port 80 (0: any free port; default: after --os)",
    "https_port": "port on 127.0.0.1 for the sandbox's port 443 (0: any free port; default: after --os)",
    "config_out": "where to write the sandbox's appliance config (default: after --os)",
}


def sandbox_spec(
    os: str,
    name: str | None = None,
    config_out: str | None = None,
    ports: tuple[str | None, str | None, str | None] = (None, None, None),
) -> sandboxes.SandboxSpec:
    """The release's default spec with what the operator gave instead (Invoke hands unset ports over as None)."""
    spec = sandboxes.SandboxSpec.for_release(os)
    ssh, http, https = (default if port is None else int(port) for port, default in zip(ports, spec.ports, strict=True))
    return dataclasses.replace(
        spec,
        name=name or spec.name,
        ssh_port=ssh,
        http_port=http,
        https_port=https,
        config_out=Path(config_out) if config_out else spec.config_out,
    )


@task(name="up", help=SANDBOX_HELP)
@one_line_errors
def sandbox_up(
    c: Context,
    os: str = sandboxes.DEFAULT_RELEASE,
    name: str | None = None,
    ssh_port: str | None = None,
    http_port: str | None = None,
    https_port: str | None = None,
    config_out: str | None = None,
) -> None:
    """Start a throwaway local Debian 12 or 13 "CVM" (systemd, sshd, room for Docker) and write its config."""
    spec = sandbox_spec(os, name, config_out, (ssh_port, http_port, https_port))
    box = sandboxes.up(spec)
    print(f"sandbox {box.name} ({spec.release}) is running")
    print(f"  ssh:    {box.ssh_command()}")
    print(f"  http:   http://{box.address}:{box.http_port}/   https: https://{box.address}:{box.https_port}/")
    print(f"  config: {box.config_file}  (e.g. inv facts --config {box.config_file})")


@task(name="down", help={key: SANDBOX_HELP[key] for key in ("os", "name", "config_out")})
@one_line_errors
def sandbox_down(
    c: Context, os: str = sandboxes.DEFAULT_RELEASE, name: str | None = None, config_out: str | None = None
) -> None:
    """Remove the sandbox: its container, Docker volume, key folder and config, by name."""
    spec = sandbox_spec(os, name, config_out)
    removed = sandboxes.down(spec)
    print("removed: " + (", ".join(removed) or f"nothing (no sandbox {spec.name})"))


@task(name="images", iterable=["os"], help={"os": "a Debian release to build the base of (repeat it; bookworm always)"})
@one_line_errors
def sandbox_images(c: Context, os: list[str]) -> None:
    """Build the sandboxes' base and stand-in images now, so that `sandbox.up` and the tests need not wait."""
    standins = sandboxes.prepare_images(sandboxes.docker_client(), os)
    bases = [sandboxes.base_image(release) for release in sandboxes.base_releases(os)]
    print("images ready: " + ", ".join([*bases, *standins.values()]))


@host_task(
    name="login",
    help={
        "saved": "where the login is kept (0600), so a re-run prints the same one",
        "ca_out": "where to write the appliance's CA, for a browser to trust",
    },
)
def sandbox_login(
    c: Context, loaded: Config, saved: str = ".sandbox/console-login.json", ca_out: str = ".sandbox/ca.pem"
) -> None:
    """A working login for the deployed web console (made once through the API), and the CA to trust it."""
    login = console_login(loaded, Path(saved), Path(ca_out))
    print(f"console CA (import it into a browser to trust the console): {ca_out}")
    print(f"console: {login.url}  login: {login.email} / {login.password}")


@host_task(name="backup", help={"reason": "recorded in the backup's manifest"})
def backup_now(c: Context, loaded: Config, reason: str = "manual") -> None:
    """Take a backup now (PostgreSQL, Redis, files; age-encrypted, to COS) and print its line."""
    with open_host(loaded) as remote:
        print(backups_edge.run_backup(loaded, remote, reason))


@host_task(help={"retention": "also show what the retention policy would delete now (a dry run)"})
def backups(c: Context, loaded: Config, retention: bool = False) -> None:
    """List the backups in COS: complete or not, verified by a drill or not, size."""
    with open_host(loaded) as remote:
        print(backups_edge.table(backups_edge.list_backups(loaded, remote)))
        if retention:
            print(backups_edge.retention_preview(loaded, remote))


@host_task(
    name="restore",
    default=True,
    help={
        "backup": "backup id (see inv backups); with --to-time, the base backup to replay from",
        "to_time": 'point-in-time recovery (backup.pitr): PostgreSQL as it was then, "2026-12-01 10:15:00+08:00"',
        "yes": "do not ask for confirmation",
    },
)
def restore_backup(
    c: Context, loaded: Config, backup: str | None = None, to_time: str | None = None, yes: bool = False
) -> None:
    """Restore a backup (or PostgreSQL to a moment) into the running stack, after a backup of what is there now."""
    target = loaded.settings.hosts[0].target
    what = f"the data as of {to_time}" if to_time else f"backup {backup}"
    if not yes and input(f"replace the data on {target} with {what}? type yes: ").strip() != "yes":
        raise StepFailed("restore cancelled: nothing was changed")
    before, restored = backups_edge.restore(loaded, backup, to_time)
    print(before)
    print(restored)


@task(
    name="drill",
    help={
        **COMMON_HELP,
        "backup": "backup id (default: the newest complete one; with --to-time, the newest base backup before it)",
        "to_time": 'also replay its base backup and the WAL to this moment (backup.pitr), "2026-12-01 10:15:00+08:00"',
        "schedule": "install a weekly drill on this machine (a systemd --user timer, else a crontab line)",
        "unschedule": "remove what --schedule installed",
    },
)
@one_line_errors
def restore_drill(
    c: Context,
    backup: str | None = None,
    to_time: str | None = None,
    schedule: bool = False,
    unschedule: bool = False,
    config: str | None = None,
    env: str | None = None,
    host: str | None = None,
) -> None:
    """Restore a backup into throwaway containers on the host, compare with its manifest, mark it verified."""
    loaded = load(config, env, host)
    if schedule or unschedule:
        if schedule:
            backups_edge.identity(loaded)  # the scheduled drill needs the key here: refuse now, not next Monday
        job = drill_schedule.drill_job(loaded, Path(__file__).parent, host)
        change = drill_schedule.schedule if schedule else drill_schedule.unschedule
        done = change(job, Path.home(), drill_schedule.local_run())
        print(f"{job.name}: {'changed' if done.changed else 'ok'} ({done.how})")
        print("\n".join(done.lines))
        return
    print(backups_edge.drill(loaded, backup, to_time))


EMAIL_HELP = {**COMMON_HELP, "email": "the account's email address"}


@task(name="add", help={**EMAIL_HELP, "admin": "an admin: not bound by service.daily_token_quota (the ceiling holds)"})
@one_line_errors
def users_add(
    c: Context,
    email: str,
    admin: bool = False,
    config: str | None = None,
    env: str | None = None,
    host: str | None = None,
) -> None:
    """Add an account; its password is asked for (or read from standard input), never taken as a flag."""
    password = accounts.read_password(sys.stdin)
    print(accounts.run_users(load(config, env, host), *accounts.add_words(email, admin), password=password))


@host_task(name="list")
def users_list(c: Context, loaded: Config) -> None:
    """List the accounts: role, active or disabled, created, discussions, tokens spent today."""
    print(accounts.run_users(loaded, "list"))


def account_task(verb: str, doc: str) -> OperatorTask:
    """`inv users.VERB --email ADDRESS`: the service's `users VERB` on one account; `doc` is its help."""

    def run(c: Context, loaded: Config, email: str) -> None:
        print(accounts.run_users(loaded, verb, email))

    run.__doc__ = doc
    run.__name__ = run.__qualname__ = f"users_{verb}"
    return host_task(name=verb, help=EMAIL_HELP)(run)


users_disable = account_task(
    "disable", "Disable an account: no more logins or discussions; its running discussions stop."
)
users_enable = account_task("enable", "Enable a disabled account again.")
users_admin = account_task("admin", "Make an account an admin (exempt from the per-user daily token quota).")


@task(name="delete", help={**EMAIL_HELP, "yes": "do not ask for confirmation"})
@one_line_errors
def users_delete(
    c: Context,
    email: str,
    yes: bool = False,
    config: str | None = None,
    env: str | None = None,
    host: str | None = None,
) -> None:
    """Delete an account and all its data: discussions, their events, files, usage, logins."""
    if not yes and input(f"delete {email} and all its data? type yes: ").strip() != "yes":
        raise StepFailed("delete cancelled: nothing was changed")
    print(accounts.run_users(load(config, env, host), "delete", email))


@host_task(
    name="invite",
    help={"days": "how long the code stays valid (1-365)", "note": "who it is for (kept with it)"},
)
def users_invite(c: Context, loaded: Config, days: int = 7, note: str = "") -> None:
    """Print a single-use sign-up code, for service.registration = "invite"."""
    print(accounts.run_users(loaded, *accounts.invite_words(days, note)))


@host_task(name="check")
def llm_check(c: Context, loaded: Config) -> None:
    """Try each LLM key from the host (one tiny request each): ok, revoked, no balance, rate limited, unreachable."""
    verdicts, usable = llm_keys.run_check(loaded)
    print(verdicts)
    if not usable:
        raise StepFailed("no usable LLM key: top up the account or put a valid key in AI_API_KEY, then inv deploy")


@task(
    name="setup",
    help={
        "config": COMMON_HELP["config"],
        "env": COMMON_HELP["env"],
        "check": "read and compare only: show what would change, write nothing",
    },
)
@one_line_errors
def cos_bucket_setup(c: Context, check: bool = False, config: str | None = None, env: str | None = None) -> None:
    """Set the buckets' ACL, versioning, lifecycle, CORS, referer (admin key); print the host key's CAM policy."""
    loaded = load(config, env)
    wanted = cos_setup.wanted_state(loaded)
    print_outcome(cos_setup.apply(wanted, cos_setup.admin_api(loaded), check), "COS buckets", "cos.setup")
    print("CAM policy for the host's key (COS_SECRET_ID):")
    print(json.dumps(cos_setup.cam_policy(loaded), indent=2))


namespace = Collection(
    config,
    render,
    facts,
    bootstrap_host,
    deploy,
    rollback,
    releases,
    status,
    logs,
    Collection("lock", lock_break),
    Collection("tls", tls_renew),
    Collection("sandbox", sandbox_up, sandbox_down, sandbox_login, sandbox_images),
    Collection("users", users_add, users_list, users_disable, users_enable, users_admin, users_delete, users_invite),
    Collection("llm", llm_check),
    backup_now,
    backups,
    Collection("restore", restore_backup, restore_drill),
    Collection("cos", cos_bucket_setup),
)


DRAIN_HELP = {
    "name": "the host: its name in the config's [[hosts]] (name, else ADDRESS or ADDRESS:PORT), or USER@ADDRESS:PORT",
    "check": "show what would change; change nothing",
    "verbose": VERBOSE_HELP,
}


@host_task(name="drain", positional=["name"], help=DRAIN_HELP)
def host_drain(c: Context, loaded: Config, name: str, check: bool = False, verbose: bool = False) -> None:
    """Take one host out of the load balancer: its /api/health answers 503; requests and WebSockets in flight go on."""
    with step_lines(verbose):
        host, results = drain.set_drained(loaded, name, drained=True, check=check)
    print_outcome(results, f"{host.label}: drain", host.label)
    if not check:
        print(drain.DRAINED_NOTE.format(host=host.label))


@host_task(name="undrain", positional=["name"], help=DRAIN_HELP)
def host_undrain(c: Context, loaded: Config, name: str, check: bool = False, verbose: bool = False) -> None:
    """Put a drained host back: its /api/health answers from the API again, and the load balancer sends it traffic."""
    with step_lines(verbose):
        host, results = drain.set_drained(loaded, name, drained=False, check=check)
    print_outcome(results, f"{host.label}: undrain", host.label)


namespace.add_collection(Collection("host", host_drain, host_undrain))
