"""The wall between the backup code's two sides: what runs on the host (the zipapp) and what stays with the operator."""

from __future__ import annotations

import ast
import io
import zipfile

import pytest

from appliance.backup.install import BACKUP_MODULES, HOST_MODULES, bundle

pytestmark = pytest.mark.unit

OPERATOR_MODULES = ("install.py", "operate.py")
# What a host-side module may import: the standard library, the COS SDK in the zipapp, and the distribution's
# python3-requests/-crcmod/-xmltodict/-six (through the SDK).
HOST_IMPORTS = ("appliance.backup", "appliance.host_paths", "qcloud_cos")


def test_every_backup_module_is_on_one_side() -> None:
    on_disk = sorted(path.name for path in BACKUP_MODULES.glob("*.py"))
    assert sorted((*HOST_MODULES, *OPERATOR_MODULES)) == on_disk


def test_the_zipapp_holds_the_host_side_and_nothing_of_the_operators() -> None:
    names = zipfile.ZipFile(io.BytesIO(bundle())).namelist()
    ours = sorted(name.rsplit("/", 1)[1] for name in names if name.startswith("appliance/backup/"))
    assert ours == sorted(HOST_MODULES)
    assert "appliance/host_paths.py" in names and "appliance/config.py" not in names


@pytest.mark.parametrize("name", HOST_MODULES)
def test_a_host_module_imports_only_the_host_side(name: str) -> None:
    tree = ast.parse((BACKUP_MODULES / name).read_text(encoding="utf-8"))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    third_party = {"pydantic", "jinja2", "fabric", "paramiko", "invoke", "docker", "rich", "yaml"}
    operator = [module for module in imported if module.startswith("appliance") and not module.startswith(HOST_IMPORTS)]
    assert not operator, f"{name} imports operator-side code: {operator}"
    assert not {module.split(".")[0] for module in imported} & third_party, name
    assert not any(module.endswith((".install", ".operate")) for module in imported), name
