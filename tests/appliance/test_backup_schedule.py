"""`inv restore.drill --schedule`: what it would install (unit), and installing it for real (integration)
into a throwaway user of a container of the rig's base image, which has a systemd user manager and the
real crontab program; the user's HOME is a folder of this test, bind-mounted at the same path."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import drill_schedule, sandbox
from appliance.config import Config, load_config
from appliance.drill_schedule import CRON, SYSTEMD, DrillJob
from appliance.errors import ApplianceError
from tests.conftest import REPO


def example(tmp_path: Path, env: str = "production") -> Config:
    path = tmp_path / "my configs" / "appliance.toml"  # a space: the command must come out quoted
    path.parent.mkdir()
    shutil.copyfile(REPO / "appliance.example.toml", path)
    return load_config(path, env)


def job_for(tmp_path: Path) -> DrillJob:
    return drill_schedule.drill_job(example(tmp_path), REPO, inv=Path("/srv/venv 100%/bin/inv"))


@pytest.mark.unit
def test_the_job_runs_this_configs_drill_from_the_repository(tmp_path: Path) -> None:
    job = drill_schedule.drill_job(example(tmp_path, "staging"), REPO, "root@10.0.0.5")
    assert job.name == "cvm-appliance-drill-agents-staging-staging"
    assert job.directory == REPO.resolve()
    config = str((tmp_path / "my configs" / "appliance.toml").resolve())
    assert job.argv[1:] == ("restore.drill", "--config", config, "--env", "staging", "--host", "root@10.0.0.5")
    assert Path(job.argv[0]).name == "inv" and Path(job.argv[0]).is_file()  # this venv's, runnable without PATH


@pytest.mark.unit
def test_the_user_timer_is_weekly_persistent_and_verifies(tmp_path: Path) -> None:
    job = job_for(tmp_path)
    files = drill_schedule.unit_files(job, tmp_path / "home")
    folder = tmp_path / "home/.config/systemd/user"
    service, timer = (files[folder / f"{job.name}.{kind}"] for kind in ("service", "timer"))
    config = tmp_path / "my configs" / "appliance.toml"
    # systemd expands % and $ in ExecStart: doubled, they stay themselves.
    assert f"ExecStart='/srv/venv 100%%/bin/inv' restore.drill --config '{config}' --env production\n" in service
    assert f"WorkingDirectory={REPO}\n" in service
    assert "OnCalendar=Mon *-*-* 05:00:00\n" in timer and "Persistent=true\n" in timer
    assert "WantedBy=timers.target" in timer
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # systemd's own parser: it names an unknown key or a bad calendar; the made-up inv is all it may find.
    done = subprocess.run(["systemd-analyze", "verify", *map(str, files)], capture_output=True, text=True)
    assert [line for line in done.stderr.splitlines() if "is not executable" not in line] == [], done.stderr
    assert "/srv/venv 100%/bin/inv is not executable" in done.stderr  # the unescaped path: what systemd runs


@pytest.mark.unit
def test_the_crontab_block_is_replaced_in_place_and_removed_alone(tmp_path: Path) -> None:
    job = job_for(tmp_path)
    block = drill_schedule.cron_block(job)
    config = tmp_path / "my configs" / "appliance.toml"
    command = f"'/srv/venv 100\\%/bin/inv' restore.drill --config '{config}' --env production"
    assert f"0 5 * * 1 cd {REPO} && {command} >/dev/null" in block.splitlines()
    theirs = "MAILTO=ops@example.com\n17 * * * * /usr/local/bin/sync-photos\n"
    installed = drill_schedule.crontab_with(theirs, job.name, block)
    assert installed == theirs + block
    assert drill_schedule.crontab_with(installed, job.name, block) == installed  # idempotent
    older = installed.replace("0 5 * * 1", "0 4 * * 1")
    assert drill_schedule.crontab_with(older, job.name, block) == installed
    after = "@reboot /bin/true\n"
    assert drill_schedule.crontab_with(installed + after, job.name, None) == theirs + after
    assert drill_schedule.crontab_with("no newline at the end", job.name, block) == "no newline at the end\n" + block


@pytest.mark.unit
def test_a_machine_with_neither_is_told_to_use_ci(tmp_path: Path) -> None:
    missing = drill_schedule.local_run(["/nonexistent/prefix"])
    with pytest.raises(ApplianceError, match=r"neither a systemd user manager nor crontab.*github-actions\.yml"):
        drill_schedule.schedule(job_for(tmp_path), tmp_path, missing)


# A real systemd user manager and crontab, in a throwaway container of the rig's base image.


@dataclass(frozen=True)
class Machine:
    container: str
    home: Path  # the same path on this machine and in the container

    def run(self, *argv: str) -> str:
        done = subprocess.run(["docker", "exec", *self.user, self.container, *argv], capture_output=True, text=True)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    @property
    def user(self) -> list[str]:
        return ["-u", "op", "-e", "XDG_RUNTIME_DIR=/run/user/1000"]

    def edge(self) -> drill_schedule.Run:
        return drill_schedule.local_run(["docker", "exec", "-i", *self.user, self.container])


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    image = sandbox.base_image()
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        sandbox.ensure_base_image(sandbox.docker_client(), log=lambda line: None)
    home = tmp_path_factory.mktemp("operator-home")
    name = f"drill-schedule-{secrets.token_hex(3)}"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "none", "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
         "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--cgroupns=host",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
         "-v", f"{home}:{home}", image, "/sbin/init"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        root = Machine(name, home)
        sandbox.wait_for_boot(sandbox.docker_client().containers.get(name), timeout=60, degraded_ok=True)
        # The image has no logind (no D-Bus): the user manager gets its runtime folder by hand, as logind would.
        setup = (
            f"useradd -d {home} -u 1000 op && chown op:op {home} && useradd -m -u 1001 plain "
            "&& install -d -o op -g op -m 0700 /run/user/1000 && mkdir -p /etc/systemd/system/user@1000.service.d "
            "&& printf '[Service]\\nEnvironment=XDG_RUNTIME_DIR=/run/user/1000\\n' "
            "> /etc/systemd/system/user@1000.service.d/runtime.conf "
            "&& systemctl daemon-reload && systemctl start user@1000.service"
        )
        done = subprocess.run(["docker", "exec", name, "sh", "-c", setup], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        root.run("mkdir", "-p", f"{home}/.config/systemd/user")  # the operator's own folders, as on their machine
        yield root
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.integration
def test_a_user_timer_is_installed_once_and_removed(machine: Machine, tmp_path: Path) -> None:
    job = job_for(tmp_path)
    first = drill_schedule.schedule(job, machine.home, machine.edge())
    assert (first.how, first.changed) == (SYSTEMD, True)
    timer = f"{job.name}.timer"
    assert machine.run("systemctl", "--user", "is-enabled", timer).strip() == "enabled"
    assert machine.run("systemctl", "--user", "is-active", timer).strip() == "active"
    listed = machine.run("systemctl", "--user", "list-timers", "--all", timer)
    assert timer in listed and "Mon " in listed  # the next elapse is a Monday
    exec_start = machine.run("systemctl", "--user", "show", "-p", "ExecStart", f"{job.name}.service")
    assert "path=/srv/venv 100%/bin/inv" in exec_start and "restore.drill" in exec_start

    again = drill_schedule.schedule(job, machine.home, machine.edge())
    assert again.changed is False

    removed = drill_schedule.unschedule(job, machine.home, machine.edge())
    assert removed.changed is True
    assert not list((machine.home / ".config/systemd/user").glob(f"{job.name}.*"))
    state = subprocess.run(["docker", "exec", *machine.user, machine.container, "systemctl", "--user", "is-enabled",
                            timer], capture_output=True, text=True)  # fmt: skip
    assert state.returncode != 0
    assert drill_schedule.unschedule(job, machine.home, machine.edge()).changed is False


@pytest.mark.integration
def test_without_a_user_manager_a_crontab_line_is_installed_once_and_removed(machine: Machine, tmp_path: Path) -> None:
    job = job_for(tmp_path)
    run = drill_schedule.local_run(["docker", "exec", "-i", "-u", "plain", machine.container])
    crontab = ["docker", "exec", "-i", "-u", "plain", machine.container, "crontab"]
    subprocess.run([*crontab, "-"], input="MAILTO=ops@example.com\n", text=True, check=True)
    first = drill_schedule.schedule(job, Path("/home/plain"), run)
    assert (first.how, first.changed) == (CRON, True)
    listing = subprocess.run([*crontab, "-l"], capture_output=True, text=True, check=True).stdout
    assert listing == "MAILTO=ops@example.com\n" + drill_schedule.cron_block(job)
    assert drill_schedule.schedule(job, Path("/home/plain"), run).changed is False
    assert drill_schedule.unschedule(job, Path("/home/plain"), run).changed is True
    assert subprocess.run([*crontab, "-l"], capture_output=True, text=True).stdout == "MAILTO=ops@example.com\n"
