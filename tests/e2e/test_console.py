"""The web console in headless Debian Chromium, through nginx's TLS on the deployed sandbox.

Screenshots of the main screens go to build/artifacts/console/ (the path is printed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from appliance.config import load_config
from appliance.remote import open_host
from tests.conftest import REPO, Deployed
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = REPO / "build" / "artifacts" / "console"
# Each agent speaks ~10 s (200 words, 50 ms apart): time to see it stream and to reload in the middle.
SLOW_TOPIC = "Hold ACME into earnings? [[fake:delay=0.05,words=200]]"
OpenBrowser = Callable[..., WebDriver]  # (language, downloads folder=None) -> a fresh headless Chromium
# In turn order (the moderator's turn sits above the others). `text`: what the turn's text holds (Markdown rendered
# once complete); `shown`: all the turn shows on screen.
TURNS = """return [...document.querySelectorAll('#view .turn')].map(e => ({
  turn: Number(e.dataset.turn), role: e.dataset.role, state: e.dataset.state,
  repaired: e.dataset.repaired === 'true', text: e.querySelector('.turn-text').textContent, shown: e.innerText}))
  .sort((a, b) => a.turn - b.turn)"""
# The fake's fixed Markdown answer, with a reasoning first: what a real deepseek-reasoner turn looks like.
MARKDOWN_TOPIC = "Weigh ACME [[fake:format=markdown,reasoning=40,delay=0.05]]"


# Wraps the page's fetch: the answer to POST .../stop reaches the console 2 s late, then sets window.stopAnswered.
HOLD_BACK_STOP_ANSWER = """const send = window.fetch;
window.fetch = async (url, init) => {
  const answer = await send(url, init);
  if (!String(url).endsWith("/stop")) return answer;
  await new Promise((resolve) => setTimeout(resolve, 2000));
  setTimeout(() => { window.stopAnswered = true; }, 0);
  return answer;
};"""


def server_key_pin(site: Site) -> str:
    """base64(sha256(SPKI)) of the certificate nginx presents, after checking it chains to the appliance's CA."""
    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw,
        site.tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    spki = (
        x509.load_der_x509_certificate(der).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def open_browser(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBrowser]:
    """Start a fresh headless Chromium with the given UI language; all are closed at the end."""
    pin = server_key_pin(site)
    drivers: list[WebDriver] = []

    def start(language: str, downloads: Path | None = None) -> WebDriver:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,900",
            f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
            # Trust exactly the key of the appliance's certificate (checked against its CA above).
            f"--ignore-certificate-errors-spki-list={pin}",
        ):
            options.add_argument(flag)
        folder = downloads or tmp_path_factory.mktemp("downloads")
        folder.mkdir(parents=True, exist_ok=True)
        options.add_experimental_option(
            "prefs", {"intl.accept_languages": language, "download.default_directory": str(folder)}
        )
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {SHOTS}")
    yield start
    for driver in drivers:
        driver.quit()


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], seconds: float = 20) -> Any:
    # A view that re-renders replaces its elements: an element found a moment ago may be gone (stale).
    waiting = WebDriverWait(driver, seconds, 0.1, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return waiting.until(check)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"not within {seconds}s at {driver.current_url}; the page said:\n{page[-2000:]}") from None


def visible(css: str) -> Callable[[WebDriver], bool]:
    return lambda driver: any(e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, css))


def fill(driver: WebDriver, form: str, email: str, password: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{form} [name=email]").send_keys(email)
    driver.find_element(By.CSS_SELECTOR, f"#{form} [name=password]").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, f"#{form} #auth-submit").click()


def log_in(driver: WebDriver, url: str, email: str, password: str) -> None:
    """Open `url`, which shows the login form to a browser without a session, and log in there."""
    driver.get(url)
    wait_for(driver, visible("#login-form"))
    fill(driver, "login-form", email, password)


def refresh_cookies(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser's refresh-token cookies (WebDriver's own cookie list only shows those of the page's path)."""
    cookies = driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
    return [c for c in cookies if c["name"] == "refresh_token"]


def stored_discussion(site: Site, email: str, password: str, discussion: str) -> dict[str, Any]:
    headers = site.log_in(email, password)
    with site.client() as client:
        answer = client.get(f"/api/discussions/{discussion}", headers=headers)
    answer.raise_for_status()
    return dict(answer.json())


def stored_messages(site: Site, email: str, password: str, discussion: str) -> list[dict[str, Any]]:
    return list(stored_discussion(site, email, password, discussion)["messages"])


def assert_screen_shows_the_stored_turns(final: list[dict[str, Any]], stored: list[dict[str, Any]]) -> None:
    """Each agent's words on screen are its stored words; the moderator's turn shows its verdict, not its JSON."""
    assert [t["role"] for t in final] == [m["role"] for m in stored]
    for turn, message in zip(final, stored, strict=True):
        if message["role"] == "moderator":
            verdict = json.loads(message["content"])
            assert verdict["summary"] in turn["shown"]
            assert '"stance"' not in turn["shown"] and "{" not in turn["shown"], turn
        else:  # plain words render as one paragraph: the same words, whitespace aside
            assert turn["text"].split() == message["content"].split(), (turn, message)
    assert not any(t["repaired"] for t in final)


def test_a_user_watches_three_agents_stream_across_a_reload_reads_the_verdict_and_logs_out(
    site: Site, open_browser: OpenBrowser
) -> None:
    browser = open_browser("en-US")
    email, password = f"c{secrets.token_hex(5)}@example.test", secrets.token_urlsafe(12)
    browser.get(site.origin + "/")
    wait_for(browser, visible("#login-form"))
    browser.save_screenshot(SHOTS / "login.png")
    browser.find_element(By.ID, "auth-switch").click()
    fill(browser, "register-form", email, password)
    wait_for(browser, visible("#new-discussion"))
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, visible("#login-form"))
    assert refresh_cookies(browser) == []
    fill(browser, "login-form", email, password)
    wait_for(browser, visible("#new-discussion"))
    [cookie] = refresh_cookies(browser)  # where a reload finds the login, out of the page script's reach
    assert (cookie["path"], cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (
        "/api/auth",
        True,
        True,
        "Strict",
    )
    browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys(SLOW_TOPIC)
    panel = [b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, "[name=panel]:checked")]
    assert panel == ["bull", "bear", "risk"]
    browser.find_element(By.ID, "start").click()
    wait_for(browser, lambda d: "/d/" in d.current_url)
    discussion = browser.current_url.rsplit("/", 1)[1]

    seen_streaming: dict[int, int] = {}  # agent's turn -> shortest text seen while it streamed
    moderator_seen: list[str] = []  # what the moderator's turn showed while it streamed

    def watch(until: Callable[[list[dict[str, Any]]], bool], seconds: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            turns: list[dict[str, Any]] = browser.execute_script(TURNS)
            for turn in turns:
                if turn["role"] == "moderator" and turn["state"] == "streaming":
                    moderator_seen.append(turn["shown"])
                elif turn["state"] == "streaming" and turn["text"]:
                    seen_streaming[turn["turn"]] = min(seen_streaming.get(turn["turn"], 10**9), len(turn["text"]))
            if until(turns):
                return turns
            time.sleep(0.1)
        raise AssertionError(f"the console did not reach the expected state in {seconds}s: {turns}")

    # Reload while the second agent is in the middle of its speech.
    before = watch(lambda ts: any(t["turn"] == 1 and t["state"] == "streaming" and len(t["text"]) > 40 for t in ts), 60)
    assert browser.find_element(By.CSS_SELECTOR, "[data-agent=bear]").get_attribute("data-state") == "speaking"
    browser.save_screenshot(SHOTS / "streaming.png")
    browser.refresh()
    after = watch(lambda ts: len(ts) >= 2, 20)
    for old in before:  # the text on screen before the reload is there again, from its start
        assert next(t for t in after if t["turn"] == old["turn"])["text"].startswith(old["text"]), (old, after)
    assert after[1]["state"] == "streaming"  # and the speech goes on live after the reload
    final = watch(lambda ts: len(ts) == 4 and all(t["state"] == "completed" for t in ts), 120)
    wait_for(browser, visible("#verdict"))
    assert browser.find_element(By.ID, "discussion-status").get_attribute("data-status") == "completed"
    browser.save_screenshot(SHOTS / "finished.png")

    # Streamed live: the three agents were each seen part-way through their speech; the moderator's JSON, never.
    assert set(seen_streaming) >= {0, 1, 2}, seen_streaming
    assert moderator_seen and all("weighing" in shown and "{" not in shown for shown in moderator_seen), moderator_seen
    # The text on screen is the text the service stored: nothing missing, nothing twice, nothing patched.
    stored = stored_messages(site, email, password, discussion)
    assert_screen_shows_the_stored_turns(final, stored)
    assert [seen_streaming[i] < len(final[i]["text"]) for i in range(3)] == [True] * 3
    verdict = browser.find_element(By.ID, "verdict").text
    assert "Moderator's verdict" in verdict
    assert json.loads(stored[-1]["content"])["summary"] in verdict

    browser.find_element(By.ID, "nav-discussions").click()
    wait_for(browser, visible(f"a[href='/d/{discussion}']"))
    browser.save_screenshot(SHOTS / "discussions.png")
    browser.set_window_size(390, 844)  # a phone
    browser.get(f"{site.origin}/d/{discussion}")
    wait_for(browser, visible("#verdict"))
    browser.save_screenshot(SHOTS / "phone.png")
    browser.set_window_size(1100, 900)

    browser.find_element(By.ID, "logout").click()
    wait_for(browser, visible("#login-form"))
    browser.refresh()  # the session is gone for good, not just hidden
    wait_for(browser, visible("#login-form"))
    assert refresh_cookies(browser) == []
    assert browser.execute_script("return sessionStorage.length + localStorage.length") == 0


def assert_turn_shows_markdown_and_folded_reasoning(browser: WebDriver, turn: int, reasoning: str) -> None:
    """The fake's Markdown answer rendered as such, its raw HTML as text, its reasoning folded above it."""
    text = browser.find_element(By.CSS_SELECTOR, f"[data-turn='{turn}'] .turn-text")
    assert text.find_element(By.CSS_SELECTOR, "h2").text == "Three things to weigh"
    assert [li.text for li in text.find_elements(By.CSS_SELECTOR, "ul > li")] == [
        "Revenue grew 12% on the quarter",
        "Margins held at 41%",
        "Guidance was raised",
    ]
    assert text.find_element(By.CSS_SELECTOR, "ul > li strong").text == "Revenue"
    assert text.find_element(By.CSS_SELECTOR, "pre > code.language-python").text.startswith("def upside(price")
    [link] = text.find_elements(By.CSS_SELECTOR, "a")  # the javascript: one is not a link, only its text
    assert (link.get_attribute("href"), link.get_attribute("rel"), link.get_attribute("target")) == (
        "https://example.com/acme-10q",
        "noopener noreferrer",
        "_blank",
    )
    assert "[this](javascript:alert(2)) is no link." in text.text
    assert "<script>alert(1)</script>" in text.text  # shown as text...
    assert text.find_elements(By.CSS_SELECTOR, "script, [onerror], [onclick]") == []  # ...and never an element
    details = browser.find_element(By.CSS_SELECTOR, f"[data-turn='{turn}'] details.reasoning")
    assert details.get_attribute("open") is None  # folded
    assert details.find_element(By.TAG_NAME, "summary").text == "Reasoning"
    assert browser.execute_script("return arguments[0].querySelector('.reasoning-text').textContent", details) == (
        reasoning
    )


def test_markdown_answers_render_safely_with_reasoning_folded_and_the_moderator_shows_only_its_verdict(
    site: Site, open_browser: OpenBrowser
) -> None:
    email, password = site.register()
    browser = open_browser("en-US")
    log_in(browser, site.origin + "/", email, password)
    wait_for(browser, visible("#new-discussion"))
    for box in browser.find_elements(By.CSS_SELECTOR, "[name=panel]:checked"):
        if box.get_attribute("value") != "bull":
            box.click()
    browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys(MARKDOWN_TOPIC)
    # Anything the answer could run would call alert: recorded here instead of a dialog.
    browser.execute_script("window.alerts = []; window.alert = (m) => window.alerts.push(String(m));")
    browser.find_element(By.ID, "start").click()
    wait_for(browser, lambda d: "/d/" in d.current_url)
    discussion = browser.current_url.rsplit("/", 1)[1]

    # Live: the reasoning arrives first (its own events), folded, while the answer streams as plain text.
    wait_for(browser, visible("[data-turn='0'][data-state=streaming] details.reasoning"), 60)
    assert browser.find_element(By.CSS_SELECTOR, "[data-turn='0'] details.reasoning").get_attribute("open") is None
    wait_for(browser, visible("#discussion-status[data-status=completed]"), 60)
    stored = stored_messages(site, email, password, discussion)
    assert [m["role"] for m in stored] == ["bull", "moderator"]
    assert stored[0]["reasoning"], stored[0]  # what the fake sent as reasoning_content, stored

    def check() -> None:
        assert_turn_shows_markdown_and_folded_reasoning(browser, 0, stored[0]["reasoning"])
        moderator = browser.find_element(By.CSS_SELECTOR, "#moderator-slot > [data-role=moderator]")
        verdict = moderator.find_element(By.ID, "verdict")  # the verdict card is the moderator's turn
        assert verdict.is_displayed()
        summary = json.loads(stored[1]["content"])["summary"]
        assert summary in verdict.text
        shown = moderator.text
        assert "{" not in shown and '"stance"' not in shown and "weighing" not in shown, shown
        assert browser.execute_script("return window.alerts ?? []") == []

    check()
    browser.find_element(By.CSS_SELECTOR, "[data-turn='0'] details.reasoning summary").click()  # unfolds
    unfolded = browser.find_element(By.CSS_SELECTOR, "[data-turn='0'] .reasoning-text")
    assert unfolded.is_displayed() and unfolded.text.split() == stored[0]["reasoning"].split()
    browser.save_screenshot(SHOTS / "markdown.png")
    browser.refresh()  # a finished discussion is drawn from GET /api/discussions/{id} alone: the same page
    wait_for(browser, visible("#discussion-status[data-status=completed]"))
    browser.execute_script("window.alerts = []; window.alert = (m) => window.alerts.push(String(m));")
    check()


def test_a_discussion_in_which_every_agent_failed_says_why_in_chinese(site: Site, open_browser: OpenBrowser) -> None:
    email, password = site.register()
    browser = open_browser("zh-CN")
    log_in(browser, site.origin + "/", email, password)
    wait_for(browser, visible("#new-discussion"))
    # Every request of every agent refused outright (400: no retry): no agent speaks, the moderator is not asked.
    browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys("Sell ACME? [[fake:status=400]]")
    browser.find_element(By.ID, "start").click()
    wait_for(browser, visible("#discussion-status[data-status=failed]"), 60)
    discussion = browser.current_url.rsplit("/", 1)[1]
    error = stored_discussion(site, email, password, discussion)["error"]
    assert error, "a failed discussion stores its reason"
    shown = browser.find_element(By.ID, "discussion-error")
    assert shown.text == f"本次讨论失败：{error}"
    assert browser.find_element(By.CSS_SELECTOR, "[data-agent=moderator]").get_attribute("data-state") == "skipped"
    assert not browser.find_element(By.ID, "verdict").is_displayed()
    browser.save_screenshot(SHOTS / "failed-discussion-zh.png")
    browser.refresh()  # drawn from the stored discussion: the same reason
    wait_for(browser, visible("#discussion-error"))
    assert browser.find_element(By.ID, "discussion-error").text == f"本次讨论失败：{error}"


def test_another_user_opening_a_discussion_url_sees_not_found_in_chinese(site: Site, open_browser: OpenBrowser) -> None:
    owner = site.new_user()
    topic = f"Private plans {secrets.token_hex(4)}"
    discussion = site.create_discussion(owner, topic, ["bull", "bear", "risk"])
    email, password = site.register()
    browser = open_browser("zh-CN")
    browser.get(f"{site.origin}/d/{discussion}")
    wait_for(browser, visible("#login-form"))
    assert browser.find_element(By.ID, "auth-submit").text == "登录"
    fill(browser, "login-form", email, password)
    wait_for(browser, visible("#not-found"))
    assert "该讨论不存在" in browser.find_element(By.ID, "not-found").text
    page = browser.find_element(By.TAG_NAME, "body").text
    assert topic not in page
    assert browser.execute_script("return document.querySelectorAll('.turn').length") == 0
    browser.save_screenshot(SHOTS / "not-found-zh.png")


def test_a_user_uploads_downloads_and_deletes_a_file(site: Site, open_browser: OpenBrowser, tmp_path: Path) -> None:
    email, password = site.register()
    upload = tmp_path / "notes.txt"
    upload.write_text("quarterly notes\n")
    browser = open_browser("en-US", tmp_path / "downloads")
    log_in(browser, f"{site.origin}/files", email, password)
    wait_for(browser, visible("#upload"))
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    browser.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    wait_for(browser, lambda d: "notes.txt" in d.find_element(By.ID, "files").text)
    browser.save_screenshot(SHOTS / "files.png")
    browser.find_element(By.XPATH, "//li[contains(., 'notes.txt')]//button[1]").click()
    saved = tmp_path / "downloads" / "notes.txt"
    wait_for(browser, lambda d: saved.exists() and saved.read_text() == "quarterly notes\n")
    browser.find_element(By.XPATH, "//li[contains(., 'notes.txt')]//button[2]").click()
    wait_for(browser, lambda d: "No files yet." in d.find_element(By.ID, "files").text)


def test_a_failed_turn_is_shown_in_words_and_the_user_stops_the_discussion(
    site: Site, open_browser: OpenBrowser
) -> None:
    email, password = site.register()
    browser = open_browser("en-US")
    log_in(browser, site.origin + "/", email, password)
    wait_for(browser, visible("#new-discussion"))
    # The stand-in LLM refuses the Bear Researcher's request outright (400: no retry).
    # 600 words at 0.05 s: a 30 s turn, so the stop lands inside it even on a loaded machine.
    topic = "Sell ACME? [[fake:delay=0.05,words=600,status=400,only=Bear]]"
    browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys(topic)
    browser.find_element(By.ID, "start").click()

    wait_for(browser, visible("[data-turn='1'][data-state=failed] .turn-error"), 60)
    assert "could not finish its turn" in browser.find_element(By.CSS_SELECTOR, "[data-turn='1'] .turn-error").text
    assert browser.find_element(By.CSS_SELECTOR, "[data-agent=bear]").get_attribute("data-state") == "failed"
    wait_for(browser, visible("[data-turn='2'][data-state=streaming]"), 30)
    browser.save_screenshot(SHOTS / "failed-turn.png")
    # The stop request's answer ("stopping") is held back until the stream's discussion_finished is in: the
    # order a loaded host produced in CI, where that late answer then overwrote the final status for good.
    browser.execute_script(HOLD_BACK_STOP_ANSWER)
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, visible("#discussion-status[data-status=stopped]"), 30)
    wait_for(browser, lambda driver: driver.execute_script("return window.stopAnswered === true"), 30)
    assert browser.find_element(By.ID, "discussion-status").get_attribute("data-status") == "stopped"
    assert browser.find_element(By.CSS_SELECTOR, "[data-turn='2']").get_attribute("data-state") == "stopped"
    assert browser.find_element(By.CSS_SELECTOR, "[data-agent=risk]").get_attribute("data-state") == "stopped"
    assert browser.find_element(By.CSS_SELECTOR, "[data-agent=moderator]").get_attribute("data-state") == "skipped"
    assert not browser.find_element(By.ID, "stop").is_displayed()
    assert not browser.find_element(By.ID, "verdict").is_displayed()
    browser.save_screenshot(SHOTS / "stopped.png")


def test_a_discussion_waiting_for_an_agent_slot_shows_its_place_in_the_queue(
    site: Site, deployed: Deployed, open_browser: OpenBrowser
) -> None:
    cap = load_config(deployed.sandbox.config_file).settings.service.agent_cap
    blocker = site.new_user()
    # Every agent slot held by someone else's slow single-agent discussion (~20 s each, stopped below).
    busy = [site.create_discussion(blocker, "Hold? [[fake:delay=0.05,words=400]]", ["bull"]) for _ in range(cap)]
    try:
        email, password = site.register()
        browser = open_browser("en-US")
        log_in(browser, site.origin + "/", email, password)
        wait_for(browser, visible("#new-discussion"))
        browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys("Buy ACME now?")
        browser.find_element(By.ID, "start").click()
        wait_for(browser, visible("[data-agent=bull][data-state=queued]"))
        assert browser.find_element(By.CSS_SELECTOR, "[data-agent=bull]").text == "Bull Researcher queued, position 1"
        browser.save_screenshot(SHOTS / "queued.png")
    finally:
        for discussion in busy:
            site.stop_discussion(blocker, discussion)
    wait_for(browser, visible("#discussion-status[data-status=completed]"), 60)  # a slot came free: it ran


def test_the_page_reconnects_when_the_api_restarts_and_the_text_goes_on(
    site: Site, deployed: Deployed, open_browser: OpenBrowser
) -> None:
    email, password = site.register()
    browser = open_browser("en-US")
    log_in(browser, site.origin + "/", email, password)
    wait_for(browser, visible("#new-discussion"))
    browser.find_element(By.CSS_SELECTOR, "#new-discussion [name=topic]").send_keys(SLOW_TOPIC)
    browser.find_element(By.ID, "start").click()
    wait_for(browser, visible("#conn[data-state=live]"))
    discussion = browser.current_url.rsplit("/", 1)[1]
    browser.execute_script(
        "const conn = document.getElementById('conn'); window.connStates = [];"
        "new MutationObserver(() => connStates.push(conn.dataset.state)).observe(conn, {attributes: true});"
    )
    wait_for(browser, lambda d: any(t["state"] == "streaming" and len(t["text"]) > 40 for t in d.execute_script(TURNS)))
    # gunicorn's HUP replaces every worker: each old one drains its WebSockets with a reconnect hint.
    with open_host(load_config(deployed.sandbox.config_file)) as host:
        restart = host.run("docker kill --signal HUP $(docker ps -qf label=com.docker.compose.service=api)")
    assert restart.exit_code == 0, restart.stderr
    back = "const i = connStates.indexOf('reconnecting'); return i >= 0 && connStates.slice(i).includes('live')"
    wait_for(browser, lambda d: d.execute_script(back), 30)  # the drain's hint, then a new socket
    wait_for(browser, visible("#discussion-status[data-status=completed]"), 120)
    assert_screen_shows_the_stored_turns(
        browser.execute_script(TURNS), stored_messages(site, email, password, discussion)
    )


def test_a_user_deletes_their_account_in_chinese_and_can_no_longer_log_in(
    site: Site, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    email, password = site.register()
    browser = open_browser("zh-CN", tmp_path / "downloads")
    log_in(browser, f"{site.origin}/account", email, password)
    wait_for(browser, visible("#account"))
    assert email in browser.find_element(By.ID, "account").text
    browser.find_element(By.CSS_SELECTOR, "#account [name=password]").send_keys("not-the-password")
    browser.find_element(By.ID, "delete-account").click()
    wait_for(browser, lambda d: "不允许" in d.find_element(By.ID, "banner").text)  # a wrong password deletes nothing
    field = browser.find_element(By.CSS_SELECTOR, "#account [name=password]")
    field.clear()
    field.send_keys(password)
    browser.find_element(By.ID, "delete-account").click()
    wait_for(browser, lambda d: "已删除" in d.find_element(By.ID, "banner").text and visible("#login-form")(d))
    assert site.attempt_login(email, password).status_code == 401
