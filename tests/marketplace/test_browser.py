"""The doctor page in real headless Chromium: sign in, claim, open the clinic's viewer, decide."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from infra.messaging import generate_key
from infra.net import free_port
from marketplace import doctors
from marketplace.domain.consensus import PanelRule
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage import make_engine, make_sessionmaker, migrate
from tests.artifacts import screenshot
from tests.marketplace.flows import open_case
from tests.marketplace.helpers import T0
from tests.marketplace.servers import serve

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MARKET_KEY = generate_key()


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Debian's headless Chromium under chromedriver, with its own profile folder."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"Debian chromium/chromium-driver not installed ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
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
        "--window-size=1200,1400",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports, JS errors
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _viewer_link(browser: Any, case_id: str) -> tuple[Any, str]:
    """A case card's link to the clinic's viewer, and its address once the page has it."""
    from selenium.webdriver.common.by import By

    found = browser.find_elements(
        By.CSS_SELECTOR, f'article[data-case-id="{case_id}"] a.viewer-link'
    )
    if not found or not found[0].is_displayed():
        return None, ""
    return found[0], found[0].get_attribute("href") or ""


def test_doctor_signs_in_claims_opens_the_viewer_link_and_decides(browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    db_url = f"sqlite:///{tmp_path / 'browser.sqlite3'}"
    migrate(db_url)
    engine = make_engine(db_url)
    session = make_sessionmaker(engine)()
    # A one-seat panel so the doctor's decision settles the case and shows in the history.
    policy = MarketPolicy(panel=PanelRule(panel_size=1, quorum=1, widen_step=1, max_panel=1))
    first = open_case(session, confidence=0.7, policy=policy)
    second = open_case(session, confidence=0.9, policy=policy)
    doctor_id, token = doctors.create_doctor(
        session, display_name="Dr Browser", specialty="neuroradiology", reputation=150, now=T0
    )
    # Nobody listens at the clinic's address: the page must not need the clinic at all.
    clinic = f"http://127.0.0.1:{free_port()}"
    wait = WebDriverWait(browser, 60)  # a deadline, generous for loaded machines
    settings = MarketplaceSettings(
        db_url=db_url, signing_key=MARKET_KEY, patient_base_url=clinic, policy=policy
    )
    with serve(create_app(settings)) as url:
        csp = requests.get(url + "/", timeout=10).headers["Content-Security-Policy"]
        assert "img-src 'self';" in csp and "127.0.0.1" not in csp  # nothing from the clinic

        browser.get(url + "/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "me-name"), "Dr Browser"))
        assert browser.find_element(By.ID, "me-id").text == doctor_id  # what the clinic enrols
        unlocks = browser.find_element(By.ID, "me-unlocks").text  # why a bounty is out of reach
        assert "admits" in unlocks and "credits" in unlocks or "every bounty" in unlocks
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pool-body tr"))
        assert len(rows) == 2 and first[:8] in rows[0].text  # highest bounty first

        rows[0].find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: _viewer_link(d, first)[1])
        link, href = _viewer_link(browser, first)
        assert link.text == "Open the image in the clinic's viewer"
        assert link.get_attribute("target") == "_blank"
        assert {"noopener", "noreferrer"} <= set(link.get_attribute("rel").split())
        split = urlsplit(href)
        assert f"{split.scheme}://{split.netloc}{split.path}" == f"{clinic}/viewer"
        assert parse_qs(split.query) == {"case": [first], "doctor": [doctor_id]}
        assert not browser.find_elements(By.CSS_SELECTOR, "img")  # no image on this origin

        card = browser.find_element(By.CSS_SELECTOR, f'article[data-case-id="{first}"]')
        card.find_element(By.CSS_SELECTOR, "input[value=tumor]").click()
        card.find_element(By.TAG_NAME, "textarea").send_keys("enhancing lesion, left")
        card.find_element(By.CSS_SELECTOR, "form button").click()
        # A vote is final: the page asks first.
        dialog = wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        assert "tumour" in dialog.text
        dialog.find_element(By.ID, "confirm-submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Receipt"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-body tr"))
        history = browser.find_element(By.ID, "history-body").text
        assert first[:8] in history and "tumour" in history
        # Check every disclosed receipt in the browser (Web Crypto SHA-256).
        browser.find_element(By.CSS_SELECTOR, "#history-body tr button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "history-body"), "receipts valid"))
        assert (
            "✓ 1/1 receipts valid, yours included"
            in browser.find_element(By.ID, "history-body").text
        )
        balance = browser.find_element(By.ID, "me-balance").text
        assert balance == f"{price_bounty(0.7):,} credits"  # the one-seat panel's whole escrow

        # Claim the second case too, so the screenshot shows a case under review.
        browser.find_element(By.CSS_SELECTOR, "#pool-body tr button").click()
        wait.until(lambda d: _viewer_link(d, second)[1])
        screenshot(browser, "doctor-page-under-review")
    profile = doctors.doctor_profile(session, doctor_id)
    assert profile.balance == price_bounty(0.7) and profile.reputation > 150
    session.close()
    engine.dispose()
