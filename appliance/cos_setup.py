"""`inv cos.setup`: the buckets' policy as data, read back and written only where it differs.

Runs on the operator's machine with an administrator's key (COS_ADMIN_SECRETS), never the host's. Each
sub-resource of each bucket (ACL, versioning, lifecycle, CORS, referer) is one line: ok, changed, pending
(--check) or failed; the first failure stops the run. The SDK builds and parses COS's XML.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from appliance.backup.cos import CosTarget
from appliance.backup.retention import horizon_days
from appliance.backup.settings import Policy
from appliance.config import Config
from appliance.errors import ConfigError
from appliance.executor import StepResult
from appliance.render import site_origin
from appliance.secrets import COS_ADMIN_SECRETS, load_secrets

Resource = Literal["acl", "versioning", "lifecycle", "cors", "referer"]
RULE_ID = "cvm-appliance-backups"
# COS answers these when a sub-resource was never set: read as "absent", not as a failure.
_ABSENT = {"NoSuchLifecycleConfiguration", "NoSuchCORSConfiguration", "NoSuchRefererConfiguration"}


@dataclass(frozen=True)
class Wanted:
    """One sub-resource of one bucket as it should be; `value` None means it must not exist."""

    bucket: str
    resource: Resource
    value: Any
    why: str

    @property
    def step(self) -> str:
        return f"{self.bucket} {self.resource}"


def _canonical(value: Any) -> str:
    """A comparable text: COS answers numbers as strings, a list of one as its item, lists in any order."""

    def strings(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: strings(v) for k, v in item.items()}
        if isinstance(item, list) and len(item) == 1:
            return strings(item[0])
        if isinstance(item, list):
            return sorted((strings(v) for v in item), key=lambda v: json.dumps(v, sort_keys=True))
        return None if item is None else str(item)

    return json.dumps(strings(value), sort_keys=True)


def desired(wanted: Wanted, current: Any) -> Any:
    """What the sub-resource should hold given what it holds: lifecycle rules of others are kept."""
    if wanted.resource != "lifecycle":
        return wanted.value
    others = [rule for rule in _rules(current) if rule.get("ID") != RULE_ID]
    return {"Rule": [*others, *wanted.value["Rule"]]}


def _rules(lifecycle: Any) -> list[dict[str, Any]]:
    rules = (lifecycle or {}).get("Rule") or []
    return rules if isinstance(rules, list) else [rules]


def differs(wanted: Wanted, current: Any) -> bool:
    return _canonical(desired(wanted, current)) != _canonical(current)


def _appid(bucket: str, field: str, config: Config) -> str:
    appid = bucket.rsplit("-", 1)[-1]
    if "-" not in bucket or not appid.isdigit():
        raise ConfigError(f"{config.path}: {field}: {bucket!r} is not NAME-APPID (e.g. agents-backup-1250000000)")
    return appid


def backup_prefix(config: Config) -> str:
    """Where the host's backups and WAL live in the bucket (HostSettings.key_prefix)."""
    return f"{config.settings.backup.prefix}{config.settings.name}/"


def wanted_state(config: Config) -> list[Wanted]:
    """Every sub-resource `inv cos.setup` manages, in the order it is applied."""
    settings = config.settings
    backup, service = settings.backup, settings.service
    found: list[Wanted] = []
    if backup.cos_bucket:
        bucket = backup.cos_bucket
        # The host's key may not delete (cam_policy): COS expires what the calendar retention no longer keeps.
        horizon = horizon_days(Policy(backup.retention.daily, backup.retention.weekly, backup.retention.monthly))
        transitions = [{"Days": backup.infrequent_after_days, "StorageClass": "STANDARD_IA"}]
        if backup.archive_after_days is not None:
            if backup.archive_after_days >= horizon:
                raise ConfigError(
                    f"{config.path}: backup.archive_after_days ({backup.archive_after_days}) is not below the "
                    f"{horizon} days after which the lifecycle rule expires backups (backup.retention): lower it"
                )
            transitions.append({"Days": backup.archive_after_days, "StorageClass": "ARCHIVE"})
        rule = {
            "ID": RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": backup_prefix(config)},
            "Transition": transitions,
            "Expiration": {"Days": horizon},
            "NoncurrentVersionExpiration": {"NoncurrentDays": backup.noncurrent_days},
        }
        tiers = ", ".join(f"{t['StorageClass']} after {t['Days']} d" for t in transitions)
        tiers += f", expire after {horizon} d"
        # Browsers always send a Referer; the host's SDK never does, so an empty one stays allowed.
        deny_all = {
            "Status": "Enabled",
            "RefererType": "Black-List",
            "DomainList": {"Domain": ["*"]},
            "EmptyReferConfiguration": "Allow",
        }
        found += [
            Wanted(bucket, "acl", "private", "private"),
            Wanted(bucket, "versioning", "Enabled", "versioning Enabled"),
            Wanted(
                bucket, "lifecycle", {"Rule": [rule]}, f"{tiers}; old versions expire after {backup.noncurrent_days} d"
            ),
            Wanted(bucket, "cors", None, "no CORS"),
            Wanted(bucket, "referer", deny_all, "every referer denied"),
        ]
    if service.artifact_storage == "cos" and service.artifact_cos_bucket:
        bucket = service.artifact_cos_bucket
        origin = site_origin(config)
        cors = {
            "CORSRule": [
                {
                    "ID": "cvm-appliance-console",
                    "AllowedOrigin": [origin],
                    "AllowedMethod": ["GET", "HEAD", "PUT"],
                    "AllowedHeader": ["*"],
                    "ExposeHeader": ["ETag"],
                    "MaxAgeSeconds": 600,
                }
            ]
        }
        allow_console = {
            "Status": "Enabled",
            "RefererType": "White-List",
            "DomainList": {"Domain": [urlsplit(origin).netloc]},
            "EmptyReferConfiguration": "Allow",
        }
        found += [
            Wanted(bucket, "acl", "private", "private"),
            Wanted(bucket, "cors", cors, f"CORS for {origin} only"),
            Wanted(bucket, "referer", allow_console, f"referer {urlsplit(origin).netloc} only"),
        ]
    if not found:
        raise ConfigError(f"{config.path}: no bucket to set up: set backup.cos_bucket or service.artifact_cos_bucket")
    return found


def cam_policy(config: Config) -> dict[str, Any]:
    """The host key's least-privilege CAM policy: objects under its prefix, put/get/list, no delete (the bucket's
    lifecycle rule does the deleting, and versioning keeps what a stolen key overwrites)."""
    settings = config.settings
    backup, service = settings.backup, settings.service
    statements: list[dict[str, Any]] = []
    if backup.cos_bucket:
        base = f"qcs::cos:{backup.cos_region}:uid/{_appid(backup.cos_bucket, 'backup.cos_bucket', config)}:"
        objects = [
            "name/cos:PutObject",
            "name/cos:GetObject",
            "name/cos:HeadObject",
            "name/cos:InitiateMultipartUpload",
            "name/cos:UploadPart",
            "name/cos:CompleteMultipartUpload",
            "name/cos:ListParts",
            "name/cos:AbortMultipartUpload",
        ]
        statements += [
            {"effect": "allow", "action": objects, "resource": [f"{base}{backup.cos_bucket}/{backup_prefix(config)}*"]},
            {
                "effect": "allow",
                "action": ["name/cos:GetBucket", "name/cos:ListMultipartUploads"],
                "resource": [f"{base}{backup.cos_bucket}/*"],
                "condition": {"string_like": {"cos:prefix": f"{backup_prefix(config)}*"}},
            },
        ]
    if service.artifact_storage == "cos" and service.artifact_cos_bucket:
        region = service.artifact_cos_region or backup.cos_region
        bucket = service.artifact_cos_bucket
        appid = _appid(bucket, "service.artifact_cos_bucket", config)
        statements.append(
            {
                "effect": "allow",  # users delete their files: the API must too
                "action": ["name/cos:PutObject", "name/cos:GetObject", "name/cos:HeadObject", "name/cos:DeleteObject"],
                "resource": [f"qcs::cos:{region}:uid/{appid}:{bucket}/*"],
            }
        )
    return {"version": "2.0", "statement": statements}


class BucketApi:
    """The edge: read and write one sub-resource of a bucket through cos-python-sdk-v5."""

    def __init__(self, client_for: Callable[[str], CosS3Client]) -> None:
        self.client_for = client_for

    def read(self, bucket: str, resource: Resource) -> Any:
        client = self.client_for(bucket)
        try:
            if resource == "acl":
                return client.get_bucket_acl(Bucket=bucket).get("CannedACL")
            if resource == "versioning":
                return client.get_bucket_versioning(Bucket=bucket).get("Status")
            if resource == "lifecycle":
                return {"Rule": _rules(client.get_bucket_lifecycle(Bucket=bucket))}
            if resource == "cors":
                rules = client.get_bucket_cors(Bucket=bucket).get("CORSRule")
                return {"CORSRule": rules if isinstance(rules, list) else [rules]} if rules else None
            answer = client.get_bucket_referer(Bucket=bucket)
            return answer if answer and answer.get("Status") else None
        except CosServiceError as exc:
            if exc.get_error_code() in _ABSENT:
                return {"Rule": []} if resource == "lifecycle" else None
            raise

    def write(self, bucket: str, resource: Resource, value: Any) -> None:
        client = self.client_for(bucket)
        if resource == "acl":
            client.put_bucket_acl(Bucket=bucket, ACL=value)
        elif resource == "versioning":
            client.put_bucket_versioning(Bucket=bucket, Status=value)
        elif resource == "lifecycle" and value["Rule"]:
            client.put_bucket_lifecycle(Bucket=bucket, LifecycleConfiguration=value)
        elif resource == "lifecycle":
            client.delete_bucket_lifecycle(Bucket=bucket)
        elif resource == "cors" and value is None:
            client.delete_bucket_cors(Bucket=bucket)
        elif resource == "cors":
            client.put_bucket_cors(Bucket=bucket, CORSConfiguration=value)
        elif value is None:
            client.delete_bucket_referer(Bucket=bucket)
        else:
            client.put_bucket_referer(Bucket=bucket, RefererConfiguration=value)


def _failure(exc: Exception) -> str:
    if isinstance(exc, CosServiceError):
        hint = {
            "SignatureDoesNotMatch": "check COS_ADMIN_SECRET_KEY",
            "InvalidAccessKeyId": "check COS_ADMIN_SECRET_ID",
            "AccessDenied": "the administrator key may not change this bucket",
            "NoSuchBucket": "create the bucket in the console first (NAME-APPID, right region)",
        }.get(str(exc.get_error_code()), "see the COS console")
        return f"{exc.get_error_code()} ({exc.get_status_code()}): {hint}"
    return f"COS unreachable: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}"


def apply(wanted: list[Wanted], api: BucketApi, check: bool) -> list[StepResult]:
    """Read each sub-resource, write what differs (not with `check`); stop at the first failure."""
    results: list[StepResult] = []
    for item in wanted:
        started = time.monotonic()
        try:
            current = api.read(item.bucket, item.resource)
            if not differs(item, current):
                status: Literal["ok", "changed", "pending"] = "ok"
            elif check:
                status = "pending"
            else:
                api.write(item.bucket, item.resource, desired(item, current))
                status = "changed"
        except (CosServiceError, CosClientError) as exc:
            results.append(StepResult(item.step, "failed", time.monotonic() - started, [item.why], _failure(exc)))
            break
        results.append(StepResult(item.step, status, time.monotonic() - started, [item.why]))
    return results


def admin_api(config: Config) -> BucketApi:
    """A BucketApi with the administrator's key from the secrets file, each bucket in its own region."""
    keys = load_secrets(config.secrets_path).require(COS_ADMIN_SECRETS)
    settings = config.settings
    backup, service = settings.backup, settings.service
    places = {str(backup.cos_bucket): (backup.cos_region, backup.cos_endpoint)}
    if service.artifact_cos_bucket:
        places[service.artifact_cos_bucket] = (
            service.artifact_cos_region or backup.cos_region,
            service.artifact_cos_endpoint or backup.cos_endpoint,
        )

    def client_for(bucket: str) -> CosS3Client:
        region, endpoint = places[bucket]
        secret_id, secret_key = (keys[name].reveal() for name in COS_ADMIN_SECRETS)
        target = CosTarget(bucket, region, secret_id, secret_key, endpoint=endpoint)
        return CosS3Client(target.sdk_config(), retry=1)

    return BucketApi(client_for)
