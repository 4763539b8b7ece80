"""`inv logs` on the operator's side: --since as Docker takes it, readable lines, --grep, --json, masking."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from appliance.errors import ConfigError
from appliance.log_lines import ALIVE, FOLLOWING, LogPrinter, docker_since, readable, split_docker_time

pytestmark = pytest.mark.unit

SHANGHAI = timezone(timedelta(hours=8))


def api_line(level: str, msg: str, docker_time: str = "2026-12-01T10:00:01.123456789Z", **fields: object) -> str:
    entry = {"ts": "2026-12-01T10:00:01.100Z", "level": level, "logger": "service.http", "msg": msg}
    return f"{docker_time} " + json.dumps({**entry, "request_id": "9f86d081884c7d65", **fields})


@pytest.mark.parametrize(
    ("given", "docker"), [("10m", "600s"), ("45s", "45s"), ("2h", "7200s"), ("1h30m", "5400s"), ("2d", "172800s")]
)
def test_a_duration_is_seconds_before_now_on_the_hosts_clock(given: str, docker: str) -> None:
    assert docker_since(given) == docker


def test_a_time_is_a_unix_time_in_its_own_zone_or_the_operators() -> None:
    ten_in_shanghai = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc).timestamp()
    assert docker_since("2026-12-01T10:00", local=SHANGHAI) == f"{ten_in_shanghai:.9f}"
    assert docker_since("2026-12-01 10:00:00+08:00") == f"{ten_in_shanghai:.9f}"
    assert docker_since("2026-12-01T02:00:00Z") == f"{ten_in_shanghai:.9f}"


@pytest.mark.parametrize("given", ["ten minutes", "10x", "", "m", "2026-13-01T10:00"])
def test_anything_else_is_one_line_naming_the_flag_and_both_forms(given: str) -> None:
    with pytest.raises(ConfigError, match=r"^--since: .* is neither a duration \(10m, 2h, 1h30m\) nor a time"):
        docker_since(given)


def test_an_api_line_reads_time_level_request_id_message_then_its_fields() -> None:
    shown = readable(split_docker_time(api_line("warning", "request", status=429, route="/api/login")))
    assert shown.plain == "2026-12-01 10:00:01.100Z  WARNING  9f86d081884c7d65  request  status=429  route=/api/login"


def test_a_traceback_follows_its_line_indented_and_other_services_keep_their_text() -> None:
    shown = readable(split_docker_time(api_line("error", "turn failed", exc="Traceback:\n  boom")))
    assert shown.plain.splitlines() == [
        "2026-12-01 10:00:01.100Z  ERROR    9f86d081884c7d65  turn failed",
        "    Traceback:",
        "      boom",
    ]
    postgres = "2026-12-01T10:00:02.5Z 2026-12-01 10:00:02 UTC LOG:  checkpoint starting: time"
    assert readable(split_docker_time(postgres)).plain == (
        "2026-12-01 10:00:02.500Z  2026-12-01 10:00:02 UTC LOG:  checkpoint starting: time"
    )


def printed(chunks: list[str], raw: bool = False, grep: str | None = None) -> list[str]:
    out = io.StringIO()
    printer = LogPrinter(
        Console(file=out, soft_wrap=True), lambda text: text.replace("sk-live-123", "******"), raw, grep
    )
    for chunk in chunks:
        printer.write(chunk)
        printer.flush()  # as Invoke does after each read
    printer.end()
    return out.getvalue().splitlines()


def test_grep_keeps_matching_lines_across_chunk_boundaries_and_masks_secrets() -> None:
    stream = "\n".join(
        [
            api_line("info", "request", status=200),
            ALIVE,
            api_line("error", "upstream refused key sk-live-123"),
            f"{FOLLOWING} 0123456789abcdef0123 v2",
            api_line("info", "request", status=200),
        ]
    )
    cut = len(stream) // 2  # a line split between two SSH reads
    lines = printed([stream[:cut], stream[cut:]], grep="ERROR")
    assert lines == [
        "2026-12-01 10:00:01.100Z  ERROR    9f86d081884c7d65  upstream refused key ******",
        "--- now following container 0123456789ab (release v2)",
    ]


def test_json_prints_the_services_own_lines_without_dockers_time() -> None:
    lines = printed([api_line("info", "request", status=200) + "\n"], raw=True)
    assert [json.loads(line)["status"] for line in lines] == [200]


def test_a_grep_that_is_no_regular_expression_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^--grep: '\(' is not a regular expression"):
        LogPrinter(Console(), str, grep="(")
