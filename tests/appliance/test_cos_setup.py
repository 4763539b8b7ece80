"""`inv cos.setup`: the plan as data (unit) and the task against the local COS on loopback (integration)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from qcloud_cos import CosS3Client

from appliance.backup.cos import CosTarget
from appliance.config import Config, load_config
from appliance.cos_setup import RULE_ID, Wanted, cam_policy, desired, differs, wanted_state
from appliance.errors import ConfigError
from tests.conftest import REPO, free_port, inv
from tests.cosfake import _MOTO_AUTH, FakeCos

ADMIN_ID = "AKIDadminadminadmin"
ADMIN_KEY = "admin-secret-key"
BACKUPS = "backups-1250000000"
FILES = "files-1250000000"


def configured(folder: Path, endpoint: str = "cos.ap-shanghai.myqcloud.com", archive: bool = True) -> Path:
    text = (REPO / "appliance.example.toml").read_text(encoding="utf-8")
    for old, new in {
        '# cos_bucket = "agents-backup-1250000000"': f'cos_bucket = "{BACKUPS}"',
        '# cos_endpoint = "cos.ap-shanghai.myqcloud.com"': f'cos_endpoint = "{endpoint}"',
        "# archive_after_days = 150": "archive_after_days = 150" if archive else "",
        'artifact_storage = "local"': f'artifact_storage = "cos"\nartifact_cos_bucket = "{FILES}"',
    }.items():
        assert old in text, f"appliance.example.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = folder / "appliance.toml"
    path.write_text(text, encoding="utf-8")
    secrets = folder / "secrets.env"
    secrets.write_text(f"COS_ADMIN_SECRET_ID={ADMIN_ID}\nCOS_ADMIN_SECRET_KEY={ADMIN_KEY}\n", encoding="utf-8")
    secrets.chmod(0o600)
    return path


def production(folder: Path, **options: object) -> Config:
    return load_config(configured(folder, **options), "production")  # type: ignore[arg-type]


@pytest.mark.unit
def test_the_wanted_state_follows_the_config(tmp_path: Path) -> None:
    wanted = {item.step: item for item in wanted_state(production(tmp_path))}
    assert list(wanted) == [
        *(f"{BACKUPS} {r}" for r in ("acl", "versioning", "lifecycle", "cors", "referer")),
        *(f"{FILES} {r}" for r in ("acl", "cors", "referer")),
    ]
    rule = wanted[f"{BACKUPS} lifecycle"].value["Rule"][0]
    assert rule["Filter"] == {"Prefix": "backups/agents/"}
    assert rule["Transition"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 150, "StorageClass": "ARCHIVE"}]
    # Retention by COS, as the host's key may not delete: 6 months of monthly backups, 31 days each, and a day.
    assert rule["Expiration"] == {"Days": 187}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert wanted[f"{BACKUPS} cors"].value is None
    assert wanted[f"{BACKUPS} referer"].value["RefererType"] == "Black-List"
    assert wanted[f"{FILES} cors"].value["CORSRule"][0]["AllowedOrigin"] == ["https://agents.example.com"]
    assert wanted[f"{FILES} referer"].value["DomainList"] == {"Domain": ["agents.example.com"]}
    no_archive = wanted_state(production(tmp_path, archive=False))[2].value["Rule"][0]
    assert [t["StorageClass"] for t in no_archive["Transition"]] == ["STANDARD_IA"]


@pytest.mark.unit
def test_the_diff_reads_cos_answers_and_keeps_other_lifecycle_rules(tmp_path: Path) -> None:
    lifecycle = next(item for item in wanted_state(production(tmp_path)) if item.resource == "lifecycle")
    ours = lifecycle.value["Rule"][0]
    # COS answers numbers as strings and may list transitions in another order: that is no change.
    tiers = [{"Days": "150", "StorageClass": "ARCHIVE"}, {"Days": "30", "StorageClass": "STANDARD_IA"}]
    as_read = {**ours, "Transition": tiers, "NoncurrentVersionExpiration": {"NoncurrentDays": "30"}}
    other = {"ID": "someone-else", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": "7"}}
    assert not differs(lifecycle, {"Rule": [as_read]})
    assert differs(lifecycle, {"Rule": [{**as_read, "NoncurrentVersionExpiration": {"NoncurrentDays": "31"}}]})
    assert desired(lifecycle, {"Rule": [other, {**ours, "Status": "Disabled"}]}) == {"Rule": [other, ours]}
    assert not differs(lifecycle, {"Rule": [other, as_read]})
    absent = Wanted(BACKUPS, "cors", None, "no CORS")
    assert not differs(absent, None) and differs(absent, {"CORSRule": [{"ID": "x"}]})
    assert differs(Wanted(BACKUPS, "acl", "private", "private"), "public-read")


@pytest.mark.unit
def test_archive_must_come_after_infrequent_access(tmp_path: Path) -> None:
    path = configured(tmp_path)
    path.write_text(path.read_text().replace("archive_after_days = 150", "archive_after_days = 20"))
    with pytest.raises(ConfigError, match="archive_after_days must be later than infrequent_after_days"):
        load_config(path, "production")


@pytest.mark.unit
def test_archive_must_come_before_the_rule_expires_backups(tmp_path: Path) -> None:
    path = configured(tmp_path)
    path.write_text(path.read_text().replace("archive_after_days = 150", "archive_after_days = 187"))
    with pytest.raises(ConfigError, match=r"archive_after_days \(187\) is not below the 187 days after which"):
        wanted_state(load_config(path, "production"))


@pytest.mark.unit
def test_the_cam_policy_grants_the_prefix_and_no_delete_of_backups(tmp_path: Path) -> None:
    statements = cam_policy(production(tmp_path))["statement"]
    objects, listing, files = statements
    assert objects["resource"] == [f"qcs::cos:ap-shanghai:uid/1250000000:{BACKUPS}/backups/agents/*"]
    assert "name/cos:PutObject" in objects["action"] and "name/cos:GetObject" in objects["action"]
    assert not [action for action in objects["action"] + listing["action"] if "Delete" in action]
    assert listing["condition"] == {"string_like": {"cos:prefix": "backups/agents/*"}}
    assert files["resource"] == [f"qcs::cos:ap-shanghai:uid/1250000000:{FILES}/*"]


@pytest.mark.unit
def test_a_bucket_without_an_appid_is_refused_in_one_line(tmp_path: Path) -> None:
    path = configured(tmp_path)
    path.write_text(path.read_text().replace(f'cos_bucket = "{BACKUPS}"', 'cos_bucket = "backups"'))
    with pytest.raises(ConfigError, match=r"backup.cos_bucket: 'backups' is not NAME-APPID"):
        cam_policy(load_config(path, "production"))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCos]:
    server = FakeCos("127.0.0.1", free_port(), ADMIN_ID, ADMIN_KEY)
    for bucket in (BACKUPS, FILES):
        server.create_bucket(bucket)
    server.start()
    yield server
    server.stop()


def client(fake: FakeCos) -> CosS3Client:
    target = CosTarget(BACKUPS, "ap-shanghai", ADMIN_ID, ADMIN_KEY, f"http://127.0.0.1:{fake.port}")
    return CosS3Client(target.sdk_config(), retry=0)


def statuses(output: str) -> dict[str, str]:
    """STEP → STATUS from the summary table."""
    rows = [line.split() for line in output.splitlines() if line.startswith("  ") and "-1250000000 " in line]
    return {f"{row[0]} {row[1]}": row[2] for row in rows}


@pytest.mark.integration
def test_setup_changes_then_converges_and_reads_back(fake: FakeCos, tmp_path: Path) -> None:
    config = str(configured(tmp_path, endpoint=f"http://127.0.0.1:{fake.port}"))
    # A public bucket to begin with, set the S3 way in moto: cos.setup must make it private.
    requests.put(f"{fake.shim.moto_url}/{FILES}?acl", headers={**_MOTO_AUTH, "x-amz-acl": "public-read"}, timeout=10)
    cos = client(fake)
    assert cos.get_bucket_acl(Bucket=FILES)["CannedACL"] == "public-read"

    check = inv("cos.setup", "--check", "--config", config, "--env", "production", timeout=120)
    assert check.returncode == 0, check.stderr
    assert set(statuses(check.stdout).values()) == {"pending", "ok"}, check.stdout
    assert cos.get_bucket_versioning(Bucket=BACKUPS).get("Status") is None  # --check wrote nothing
    assert cos.get_bucket_acl(Bucket=FILES)["CannedACL"] == "public-read"

    first = inv("cos.setup", "--config", config, "--env", "production", timeout=120)
    assert first.returncode == 0, first.stderr
    assert statuses(first.stdout) == {
        **statuses(check.stdout),
        **{step: "changed" for step, status in statuses(check.stdout).items() if status == "pending"},
    }
    assert "changed" in statuses(first.stdout).values()
    second = inv("cos.setup", "--config", config, "--env", "production", timeout=120)
    assert second.returncode == 0, second.stderr
    assert set(statuses(second.stdout).values()) == {"ok"}, second.stdout
    assert "0 changed" in second.stdout

    assert cos.get_bucket_versioning(Bucket=BACKUPS)["Status"] == "Enabled"
    (rule,) = cos.get_bucket_lifecycle(Bucket=BACKUPS)["Rule"]
    assert rule["ID"] == RULE_ID and rule["Filter"] == {"Prefix": "backups/agents/"}
    assert rule["Transition"] == [
        {"Days": "30", "StorageClass": "STANDARD_IA"},
        {"Days": "150", "StorageClass": "ARCHIVE"},
    ]
    assert rule["Expiration"] == {"Days": "187"}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": "30"}
    assert cos.get_bucket_acl(Bucket=FILES)["CannedACL"] == "private"
    assert cos.get_bucket_cors(Bucket=FILES)["CORSRule"][0]["AllowedOrigin"] == ["https://agents.example.com"]
    referer = cos.get_bucket_referer(Bucket=FILES)
    assert referer["RefererType"] == "White-List" and referer["DomainList"] == {"Domain": ["agents.example.com"]}
    assert cos.get_bucket_referer(Bucket=BACKUPS)["RefererType"] == "Black-List"
    policy = json.loads(second.stdout.split("CAM policy for the host's key (COS_SECRET_ID):", 1)[1])
    assert policy["statement"][0]["resource"][0].endswith(f"{BACKUPS}/backups/agents/*")


@pytest.mark.integration
def test_a_wrong_admin_key_fails_in_one_line(fake: FakeCos, tmp_path: Path) -> None:
    config = configured(tmp_path, endpoint=f"http://127.0.0.1:{fake.port}")
    (tmp_path / "secrets.env").write_text(f"COS_ADMIN_SECRET_ID={ADMIN_ID}\nCOS_ADMIN_SECRET_KEY=wrong-key-value\n")
    result = inv("cos.setup", "--config", str(config), "--env", "production", timeout=120)
    assert result.returncode != 0
    assert f"{BACKUPS} acl: SignatureDoesNotMatch (403): check COS_ADMIN_SECRET_KEY" in result.stderr, result.stderr
