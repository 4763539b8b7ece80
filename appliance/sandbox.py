"""A throwaway local "CVM": a systemd + sshd container with room for its own Docker engine.

The same code serves `inv sandbox.up` and the test rig. The base image is made once with
debootstrap from the machine's own Debian mirror (no registry is needed) and kept as a Docker image.
Everything created is named after the sandbox, and `down` removes exactly those names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from docker.models.containers import Container

from appliance.errors import ApplianceError, SandboxError
from appliance.images import operator_engine
from appliance.remote import host_key_line
from appliance.render import BUNDLE_ROOT, render_template

BASE_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,ca-certificates,curl,python3,sudo,cron,iproute2,procps,kmod,iptables,less"
)
# Bump when _prepare_rootfs changes: the tag carries it, so no machine reuses an image of an old recipe.
RECIPE_VERSION = 4
# The Debian releases a sandbox can run, each with its own defaults so two sandboxes can run side by side.
RELEASES = ("bookworm", "trixie")
DEFAULT_RELEASE = "bookworm"


# Docker 26 (trixie's) turns IPv6 off on each container's interface through /proc/sys, which is read-only
# inside a sandbox (itself a container; a real host's is writable); this lets it carry on. Older engines never try.
SANDBOX_DOCKERD_ENV = {"trixie": "DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1"}


def base_image(release: str = DEFAULT_RELEASE) -> str:
    """The tag of a release's base image; it names the recipe, so a changed recipe builds a new image."""
    recipe = "/".join([BASE_PACKAGES, str(RECIPE_VERSION), *filter(None, [SANDBOX_DOCKERD_ENV.get(release)])])
    return f"cvm-base:{release}-" + hashlib.sha256(recipe.encode()).hexdigest()[:8]


# The stand-ins and the API image build on this one whatever the sandbox's release: in production they are
# the same images (postgres:16-bookworm, …) on every host OS, and the service's Python is bookworm's 3.11.
BASE_IMAGE = base_image(DEFAULT_RELEASE)
LABEL = "cvm-appliance.sandbox"
MIRROR_ENV = "APPLIANCE_DEBIAN_MIRROR"
BOOT_TIMEOUT = 90

TextLog = Callable[[str], None]


@dataclass(frozen=True)
class SandboxSpec:
    """What to create. Port 0 lets Docker choose a free port (the tests do that)."""

    name: str = "cvm-sandbox"
    release: str = DEFAULT_RELEASE
    ssh_port: int = 2222
    http_port: int = 8080
    https_port: int = 8443
    state_root: Path = Path(".sandbox")
    config_out: Path = Path("sandbox.toml")

    @classmethod
    def for_release(cls, release: str) -> SandboxSpec:
        """`inv sandbox.up --os RELEASE`'s defaults: bookworm's, or its own name, ports and config for another."""
        if release not in RELEASES:
            raise SandboxError(f"unknown sandbox OS {release!r}: use one of {', '.join(RELEASES)}")
        if release == DEFAULT_RELEASE:
            return cls()
        offset = 100 * RELEASES.index(release)
        return cls(
            f"cvm-sandbox-{release}",
            release,
            2222 + offset,
            8080 + offset,
            8443 + offset,
            config_out=Path(f"sandbox-{release}.toml"),
        )

    @property
    def image(self) -> str:
        return base_image(self.release)

    @property
    def ports(self) -> tuple[int, int, int]:
        """SSH, HTTP and HTTPS on 127.0.0.1."""
        return (self.ssh_port, self.http_port, self.https_port)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def volume(self) -> str:
        return f"{self.name}-docker"


@dataclass(frozen=True)
class Sandbox:
    """A running sandbox and how to reach it."""

    name: str
    address: str
    ssh_port: int
    http_port: int
    https_port: int
    key_file: Path
    known_hosts: Path
    config_file: Path

    def ssh_command(self) -> str:
        known = f"UserKnownHostsFile={self.known_hosts}"
        return f"ssh -p {self.ssh_port} -i {self.key_file} -o {known} root@{self.address}"


@dataclass(frozen=True)
class DebianMirror:
    """Where the Debian archive and its security archive are."""

    archive: str
    security: str


def debian_mirror(sources_text: str) -> DebianMirror | None:
    """The Debian archive and security URIs in apt sources text (one-line or deb822 format)."""
    uris = re.findall(r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", sources_text, re.MULTILINE)
    uris = [uri.rstrip("/") for uri in uris]
    archive = next((uri for uri in uris if uri.endswith("/debian")), None)
    if archive is None:
        return None
    security = next((uri for uri in uris if uri.endswith("/debian-security")), f"{archive}-security")
    return DebianMirror(archive, security)


def local_mirror() -> DebianMirror:
    """The Debian mirror this machine's apt uses ($APPLIANCE_DEBIAN_MIRROR wins)."""
    if os.environ.get(MIRROR_ENV):
        archive = os.environ[MIRROR_ENV].rstrip("/")
        return DebianMirror(archive, f"{archive}-security")
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    text = "\n".join(path.read_text(errors="replace") for path in sources if path.is_file())
    mirror = debian_mirror(text)
    if mirror is None:
        raise SandboxError(f"no Debian mirror found in apt sources: set {MIRROR_ENV}")
    return mirror


def docker_client() -> docker.DockerClient:
    """The machine's Docker engine, where sandboxes run; a sandbox error (exit 5) if it does not answer."""
    try:
        return operator_engine()
    except ApplianceError as exc:
        raise SandboxError(f"{exc}, or run scripts/dev-prereqs.sh") from None


# Held while the base and stand-in images are looked up or built: two `inv sandbox.up` (or two test workers) at
# once would each build and re-tag them, and a sandbox started from the first build would then differ from the tag.
IMAGES_LOCK = Path("/var/tmp/cvm-sandbox-images.lock")  # noqa: S108 - machine-wide on purpose


@contextlib.contextmanager
def images_lock() -> Iterator[None]:
    """This machine's sandbox image builds, one at a time across processes."""
    with IMAGES_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base_image(client: docker.DockerClient, release: str = DEFAULT_RELEASE, log: TextLog = print) -> bool:
    """Build a release's base image with debootstrap unless it exists; True if it was built."""
    with images_lock():
        return _ensure_base_image(client, release, log)


def _ensure_base_image(client: docker.DockerClient, release: str, log: TextLog) -> bool:
    image = base_image(release)
    try:
        client.images.get(image)
        return False
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed: run scripts/dev-prereqs.sh (apt-get install debootstrap)")
    mirror = local_mirror()
    log(f"building {image} with debootstrap from the local Debian mirror (about a minute, once)")
    with tempfile.TemporaryDirectory(prefix="cvm-base-", dir="/var/tmp") as workdir:
        rootfs = Path(workdir) / "rootfs"
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            release,
            str(rootfs),
            mirror.archive,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:]
            raise SandboxError(f"debootstrap failed: {' '.join(tail) or 'exit ' + str(completed.returncode)}")
        _prepare_rootfs(rootfs, release, mirror)
        _apply_updates(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        importer = subprocess.run(["docker", "import", "-", image], stdin=tar.stdout, capture_output=True, check=False)
        tar.wait()
        if tar.returncode != 0 or importer.returncode != 0:
            raise SandboxError(f"docker import of {image} failed: {importer.stderr.decode().strip()}")
    return True


def _apply_updates(rootfs: Path) -> None:
    """The release's pending updates applied in the image, as a cloud's public image comes: debootstrap takes the
    release as it shipped, so every sandbox's bootstrap downloaded and installed the same security updates (the
    longest bootstrap step, ~40 s each). Services never start in the chroot (policy-rc.d)."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n", encoding="utf-8")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    try:
        upgrade = (
            "apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Options::=--force-confold "
            "dist-upgrade >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"
        )
        completed = subprocess.run(["chroot", str(rootfs), "sh", "-c", upgrade], capture_output=True, text=True)
    finally:
        subprocess.run(["umount", str(rootfs / "proc")], check=False)
        policy.unlink()
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:]
        raise SandboxError(f"updating the base image failed: {' '.join(tail) or 'exit ' + str(completed.returncode)}")


def _prepare_rootfs(rootfs: Path, release: str, mirror: DebianMirror) -> None:
    """Make the tree boot as a container: apt sources, no host keys baked in, no getty on a tty."""
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror.archive} {release} main\ndeb {mirror.archive} {release}-updates main\n"
        f"deb {mirror.security} {release}-security main\n",
        encoding="utf-8",
    )
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # sshd needs host keys before it starts; each sandbox generates its own at first boot.
    dropin = rootfs / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "10-hostkeys.conf").write_text(
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
        encoding="utf-8",
    )
    if release in SANDBOX_DOCKERD_ENV:
        docker_dropin = rootfs / "etc/systemd/system/docker.service.d"
        docker_dropin.mkdir(parents=True, exist_ok=True)
        (docker_dropin / "10-sandbox.conf").write_text(
            f"[Service]\nEnvironment={SANDBOX_DOCKERD_ENV[release]}\n", encoding="utf-8"
        )
    for unit in ("getty@tty1.service", "console-getty.service", "systemd-firstboot.service"):
        (rootfs / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (rootfs / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (rootfs / "etc/machine-id").write_text("", encoding="utf-8")


# Where a sandbox's relay sends alerts (plus a key): no such host unless a test starts one.
SANDBOX_WECOM_URL = "http://wecom-robot:8080/cgi-bin/webhook/send?key="
STANDIN_IMAGES = BUNDLE_ROOT / "compose" / "standin-images"
STANDINS = ("postgres", "redis", "nginx", "prometheus", "alertmanager", "node-exporter")
# Stand-ins that share a folder of compose/standin-images/, and the build arguments that make each (the others are
# built from the folder of their own name).
STANDIN_BUILDS = {
    "prometheus": ("prom", {"PACKAGE": "prometheus", "PROGRAM": "prometheus", "PORT": "9090"}),
    "alertmanager": ("prom", {"PACKAGE": "prometheus-alertmanager", "PROGRAM": "alertmanager", "PORT": "9093"}),
}


def standin_image(client: docker.DockerClient, name: str) -> str:
    """`cvm-standin/NAME:<hash of its folder and build arguments>` built on the base image, once."""
    folder_name, arguments = STANDIN_BUILDS.get(name, (name, {}))
    folder = STANDIN_IMAGES / folder_name
    digest = hashlib.sha256(BASE_IMAGE.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    for argument, value in sorted(arguments.items()):
        digest.update(f"{argument}={value}".encode())
    ref = f"cvm-standin/{name}:{digest.hexdigest()[:10]}"
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        buildargs = {"BASE_IMAGE": BASE_IMAGE, **arguments}
        try:
            client.images.build(path=str(folder), tag=ref, buildargs=buildargs, rm=True, forcerm=True, pull=False)
        except docker.errors.BuildError as exc:
            raise SandboxError(f"building the {name} stand-in image failed: {exc.msg}") from None
    return ref


def base_releases(releases: Iterable[str]) -> tuple[str, ...]:
    """The releases whose base images sandboxes of `releases` need: theirs, and the default one, which the
    stand-ins and the API image build on."""
    return tuple(dict.fromkeys((*releases, DEFAULT_RELEASE)))


def prepare_images(client: docker.DockerClient, releases: Iterable[str], log: TextLog = print) -> dict[str, str]:
    """The base images of `base_releases(releases)` and the stand-ins, each built once; returns the stand-ins'
    references by name."""
    with images_lock():
        for release in base_releases(releases):
            _ensure_base_image(client, release, log)
        log("building the postgres, redis, nginx and monitoring stand-in images (once; no registry is needed)")
        return {name: standin_image(client, name) for name in STANDINS}


def generate_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair in `directory` (0600 private key); returns (key path, public line)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    key_file = directory / "id_ed25519"
    key_file.unlink(missing_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public_line = public.decode() + " cvm-appliance-sandbox\n"
    (directory / "id_ed25519.pub").write_text(public_line, encoding="utf-8")
    return key_file, public_line


def _existing(client: docker.DockerClient, name: str) -> Container | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _start_container(client: docker.DockerClient, spec: SandboxSpec) -> Container:
    client.volumes.create(spec.volume, labels={LABEL: spec.name})

    def port(number: int) -> tuple[str, int | None]:
        return ("127.0.0.1", number or None)

    try:
        return client.containers.run(
            spec.image,
            command="/sbin/init",
            # systemd's own shutdown signal: it ignores docker's default SIGTERM, so a stop or restart waited out
            # its 10 s (or the caller's) timeout and then killed the "host" instead of shutting it down.
            stop_signal="SIGRTMIN+3",
            name=spec.name,
            hostname=spec.name,
            detach=True,
            labels={LABEL: spec.name},
            # --privileged fails on these VMs (no CAP_SYS_RESOURCE to hand out): all caps but that one.
            cap_add=["ALL"],
            cap_drop=["SYS_RESOURCE"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                spec.volume: {"bind": "/var/lib/docker", "mode": "rw"},
            },
            tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},  # noqa: S108 - the container's own /tmp
            ports={
                "22/tcp": port(spec.ssh_port),
                "80/tcp": port(spec.http_port),
                "443/tcp": port(spec.https_port),
            },
            environment={"container": "docker"},
        )
    except docker.errors.APIError as exc:
        client.volumes.get(spec.volume).remove(force=True)
        taken = re.search(r"127\.0\.0\.1:(\d+)", str(exc)) if "allocated" in str(exc) or "in use" in str(exc) else None
        if taken:
            raise SandboxError(
                f"port {taken.group(1)} on 127.0.0.1 is taken: pass other --ssh-port/--http-port/--https-port"
            ) from None
        raise SandboxError(f"cannot start sandbox {spec.name}: {exc.explanation or exc}") from None


def _exec(container: Container, *command: str) -> str:
    code, output = container.exec_run(list(command))
    text = str(output.decode(errors="replace")).strip()
    if code != 0:
        raise SandboxError(f"sandbox {container.name}: {' '.join(command)} failed: {text.splitlines()[-1:] or code}")
    return text


def wait_for_boot(container: Container, timeout: int = BOOT_TIMEOUT, degraded_ok: bool = False) -> None:
    """Until the container's systemd says it is up (right after the start it has no bus yet and says so); a
    sandbox with failed units is an error, unless `degraded_ok` (a bare container of the base image lacks some)."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        _, output = container.exec_run(["systemctl", "is-system-running"])
        state = output.decode(errors="replace").strip()
        if state == "running" or (state == "degraded" and degraded_ok):
            return
        if state == "degraded":
            failed = container.exec_run(["systemctl", "--failed", "--no-legend", "--plain"]).output.decode()
            units = ", ".join(line.split()[0] for line in failed.splitlines() if line.strip())
            raise SandboxError(f"sandbox {container.name} booted degraded: failed units: {units}")
        time.sleep(0.5)
    raise SandboxError(f"sandbox {container.name} did not finish booting in {timeout}s (state: {state})")


def _install_authorized_key(container: Container, public_line: str) -> None:
    payload = public_line.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        folder = tarfile.TarInfo(".ssh")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(folder)
        entry = tarfile.TarInfo(".ssh/authorized_keys")
        entry.size, entry.mode = len(payload), 0o600
        tar.addfile(entry, io.BytesIO(payload))
    if not container.put_archive("/root", archive.getvalue()):
        raise SandboxError(f"sandbox {container.name}: could not install the SSH key")


def _published_port(container: Container, port: str) -> int:
    return int(container.ports[port][0]["HostPort"])


def up(spec: SandboxSpec, log: TextLog = print) -> Sandbox:
    """Create (or find running) the sandbox, install a fresh key, write its config; return its address."""
    client = docker_client()
    standins = prepare_images(client, (spec.release,), log)
    container = _existing(client, spec.name)
    if container is not None and container.status != "running":
        container.start()
    if container is None:
        log(f"starting sandbox {spec.name}")
        container = _start_container(client, spec)
    wait_for_boot(container)
    _exec(container, "systemctl", "is-active", "--quiet", "ssh")
    key_file, public_line = generate_key(spec.state_dir)
    _install_authorized_key(container, public_line)
    container.reload()
    sandbox = Sandbox(
        name=spec.name,
        address="127.0.0.1",
        ssh_port=_published_port(container, "22/tcp"),
        http_port=_published_port(container, "80/tcp"),
        https_port=_published_port(container, "443/tcp"),
        key_file=key_file.resolve(),
        known_hosts=(spec.state_dir / "known_hosts").resolve(),
        config_file=spec.config_out.resolve(),
    )
    host_key = _exec(container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
    sandbox.known_hosts.write_text(host_key_line(sandbox.address, sandbox.ssh_port, host_key), encoding="utf-8")
    _write_config(sandbox, spec.state_dir.resolve(), standins)
    return sandbox


def _write_config(sandbox: Sandbox, state_dir: Path, standins: dict[str, str]) -> None:
    secrets_file = state_dir / "secrets.env"
    if not secrets_file.exists():
        descriptor = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            # The sandbox talks to the project's local LLM stand-in, which takes any key.
            handle.write(f"AI_API_KEY=sandbox-{os.urandom(12).hex()}\n")
            # Alerts go to a WeCom robot stand-in that tests start on the egress network as wecom-robot.
            handle.write(f"WECOM_WEBHOOK_URL={SANDBOX_WECOM_URL}{os.urandom(8).hex()}\n")
    context = {
        "sandbox": sandbox,
        "secrets_file": secrets_file,
        "ca_dir": state_dir / "ca",
        "marker": config_marker(sandbox.name),
        "base_image": BASE_IMAGE,
        "standins": standins,
    }
    text = render_template("appliance/sandbox.toml.j2", context)
    sandbox.config_file.write_text(text, encoding="utf-8")


def config_marker(name: str) -> str:
    """The first line of a sandbox's config; `down` removes only a file that carries it."""
    return f'# cvm-appliance sandbox "{name}"'


def down(spec: SandboxSpec) -> list[str]:
    """Remove the sandbox's container, volume, state folder and config; return what was removed."""
    client = docker_client()
    removed = []
    container = _existing(client, spec.name)
    if container is not None:
        container.remove(force=True, v=True)
        removed.append(f"container {spec.name}")
    try:
        client.volumes.get(spec.volume).remove(force=True)
        removed.append(f"volume {spec.volume}")
    except docker.errors.NotFound:
        pass
    if spec.state_dir.exists():
        shutil.rmtree(spec.state_dir)
        removed.append(f"folder {spec.state_dir}")
    if spec.config_out.exists() and config_marker(spec.name) in spec.config_out.read_text(encoding="utf-8"):
        spec.config_out.unlink()
        removed.append(f"config {spec.config_out}")
    return removed
