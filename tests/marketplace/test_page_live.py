"""The doctor page as a radiologist uses it, in real headless Chromium against a real
marketplace: live pool and history (no reload), the keyboard alone, history at a glance, and
accessibility (axe-core, 390 px phones, 200 % zoom). Screenshots go to var/test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from infra.messaging import generate_key
from infra.net import free_port
from marketplace import doctors, intake, teaching
from marketplace.domain.consensus import PanelRule
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.messages import CasesTaught
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage import make_engine, make_sessionmaker, migrate
from marketplace.storage.models import Vote
from tests.accessibility import axe_violations
from tests.artifacts import screenshot
from tests.marketplace.flows import MODEL_SHA, case_opened, open_case
from tests.marketplace.servers import Api, serve
from tests.marketplace.test_browser import chromium

pytestmark = pytest.mark.browser

#: Three seats; three votes with two agreeing settle (no posterior rule: the test knows when).
POLICY = MarketPolicy(
    panel=PanelRule(panel_size=3, quorum=2, widen_step=2, max_panel=3, use_reliability=False)
)


class Market:
    """A marketplace app on its own SQLite store, with a session for playing the clinic."""

    def __init__(self, tmp_path: Path) -> None:
        db_url = f"sqlite:///{tmp_path / 'page.sqlite3'}"
        migrate(db_url)
        self.engine = make_engine(db_url)
        self.session = make_sessionmaker(self.engine)()
        self.settings = MarketplaceSettings(
            db_url=db_url,
            signing_key=generate_key(),
            patient_base_url="http://127.0.0.1:9",  # no clinic needed by the page
            escalation_interval_s=3600,
            events_poll_s=0.2,
            policy=POLICY,
        )

    def doctor(self, name: str, reputation: int = 150) -> tuple[str, str]:
        return doctors.create_doctor(
            self.session,
            display_name=name,
            specialty="neuroradiology",
            reputation=reputation,
            now=datetime.now(UTC),
        )

    def case(self, confidence: float) -> str:
        return open_case(self.session, confidence=confidence, now=datetime.now(UTC), policy=POLICY)

    def model_case(self, **model: object) -> str:
        """A case whose clinic named the model version that predicted it (and its passport)."""
        now = datetime.now(UTC)
        message = replace(case_opened(confidence=0.9, now=now), **model)
        assert intake.open_case_now(self.session, message, now=now, policy=POLICY)
        return message.case_id

    def unfamiliar_case(self) -> str:
        """A case whose image the model found unlike its training data (the clinic says so)."""
        now = datetime.now(UTC)
        message = replace(case_opened(confidence=0.9, now=now), unfamiliar=True)
        assert intake.open_case_now(self.session, message, now=now, policy=POLICY)
        return message.case_id


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    m = Market(tmp_path)
    try:
        yield m
    finally:
        m.session.close()
        m.engine.dispose()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _sign_in(browser: Any, url: str, token: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)  # a deadline, generous for loaded machines
    browser.get(url + "/")
    browser.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "live-state").text == "● Live")
    # A mark that a reload would wipe: every later check runs on this same page.
    browser.execute_script("window.samePage = true;")
    return wait


def _same_page(browser: Any) -> bool:
    return bool(browser.execute_script("return window.samePage === true;"))


def _keys(browser: Any, *keys: str) -> None:
    """Type at whatever has the focus, as a keyboard would (no element is clicked)."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(browser)
    for key in keys:
        chain.send_keys(key)
    chain.perform()


def _script_errors(browser: Any) -> list[str]:
    """Console errors (script errors, CSP violations) since the last call, but the favicon."""
    return [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]


def _fits(browser: Any) -> bool:
    """Nothing sticks out sideways: no horizontal scrolling needed."""
    return bool(
        browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;"
        )
    )


def _emulate(browser: Any, width: int, height: int, scale: float, mobile: bool) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile},
    )


def test_settlements_by_others_and_new_cases_appear_without_a_reload(market, browser) -> None:
    from selenium.webdriver.common.by import By

    _, token = market.doctor("Dr Live")
    others = [market.doctor(f"Dr Other {i}")[1] for i in range(2)]
    case_id = market.case(confidence=0.7)
    with serve(create_app(market.settings)) as url:
        api = Api(url)
        for other in others:
            assert api("POST", f"/api/cases/{case_id}/claim", other).status_code == 201
        wait = _sign_in(browser, url, token)
        rows = browser.find_elements(By.CSS_SELECTOR, "#pool-body tr")
        assert len(rows) == 1 and case_id[:8] in rows[0].text
        rows[0].find_element(By.TAG_NAME, "button").click()
        card = f'#claimed-list article[data-case-id="{case_id}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, card))
        # Before the vote: no hint of what the model said.
        assert "model said" not in browser.find_element(By.CSS_SELECTOR, card).text.lower()
        browser.find_element(By.CSS_SELECTOR, f"{card} input[value=tumor]").click()
        browser.find_element(By.CSS_SELECTOR, f"{card} form button").click()
        browser.find_element(By.ID, "confirm-submit").click()
        wait.until(lambda d: "The model said: tumour" in d.find_element(By.CSS_SELECTOR, card).text)
        screenshot(browser, "doctor-page-voted-waiting")

        # The other doctors' votes settle the case (two agreeing of three): the page shows it
        # in the history, with the reputation and balance it brought, without a reload.
        for other, label in zip(others, ("tumor", "no_tumor"), strict=True):
            vote = {"case_id": case_id, "label": label}
            assert api("POST", "/decision", other, json=vote).status_code == 201
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-body tr"))
        history = browser.find_element(By.ID, "history-body").text
        assert case_id[:8] in history and "tumour" in history
        paid = api("GET", "/api/me", token).json()["balance"]
        assert 0 < paid < price_bounty(0.7)  # shared with the other agreeing doctor
        wait.until(lambda d: d.find_element(By.ID, "me-balance").text == f"{paid:,} credits")
        assert not browser.find_elements(By.CSS_SELECTOR, card)  # off the panel list
        assert "settled" in browser.find_element(By.ID, "news").text
        # History at a glance: the two charts and the agreement.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-reputation polyline"))
        assert browser.find_element(By.ID, "me-agreement").text == "100% (1 of 1)"
        assert browser.find_element(By.ID, "me-taught").text == "0 of your settled cases"
        desc = browser.find_element(By.CSS_SELECTOR, "#chart-earnings desc")
        assert f"{paid} credits now" in desc.get_attribute("textContent")

        # A new case from the clinic, and an escalation, reach the open page too.
        new_case = market.case(confidence=0.6)
        wait.until(lambda d: new_case[:8] in d.find_element(By.ID, "pool-body").text)
        assert "New claimable case" in browser.find_element(By.ID, "news").text
        assert _same_page(browser)
        screenshot(browser, "doctor-page-live-history")
        assert _script_errors(browser) == []

        # The clinic's promoted fine-tune learned from the settled case: the page says so.
        taught = CasesTaught(MODEL_SHA, "ab" * 32, (case_id,), datetime.now(UTC))
        teaching.record_taught(market.session, taught, now=datetime.now(UTC))
        market.session.commit()
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "me-taught").text == "1 of your settled cases")


def test_an_unfamiliar_image_is_flagged_in_the_pool_and_on_the_case(market, browser) -> None:
    from selenium.webdriver.common.by import By

    _, token = market.doctor("Dr Senior", reputation=200)  # the top tier admits the ceiling
    flagged, plain = market.unfamiliar_case(), market.case(confidence=0.9)
    with serve(create_app(market.settings)) as url:
        wait = _sign_in(browser, url, token)
        rows = {
            row.get_attribute("data-key"): row
            for row in browser.find_elements(By.CSS_SELECTOR, "#pool-body tr")
        }
        assert "Unfamiliar image" in rows[flagged].text and "unfamiliar" in (
            rows[flagged].get_attribute("class")
        )
        assert "Unfamiliar" not in rows[plain].text
        rows[flagged].find_element(By.TAG_NAME, "button").click()
        card = f'#claimed-list article[data-case-id="{flagged}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{card} .facts .flag"))
        flag = browser.find_element(By.CSS_SELECTOR, f"{card} .facts .flag").text
        assert "Unfamiliar image: the model's confidence is not trusted" in flag
        screenshot(browser, "doctor-page-unfamiliar")


def test_the_model_version_links_to_its_readable_passport(market, browser) -> None:
    from selenium.webdriver.common.by import By

    passport = "0x" + "aB" * 20
    _, token = market.doctor("Dr Passport", reputation=200)
    attested = market.model_case(
        model_version="lenet v2", passport_id=passport, model_attested=True
    )
    unattested = market.model_case(model_version="lenet (unattested)", model_attested=False)
    # The Ocean service's address (a port nobody listens on: the page never loads from it).
    view = f"http://127.0.0.1:{free_port()}"
    href = f"{view}/passports/{passport}"
    text = "Model lenet v2 · passport 0xaBaB…aBaB"

    def check(link: Any) -> None:
        assert (link.get_attribute("href"), link.text) == (href, text)
        assert link.get_attribute("target") == "_blank"
        assert {"noopener", "noreferrer"} <= set(link.get_attribute("rel").split())
        assert passport in link.get_attribute("title")  # the whole id, for readers

    settings = replace(market.settings, passport_view_url=view)
    with serve(create_app(settings)) as url:
        wait = _sign_in(browser, url, token)
        rows = {
            row.get_attribute("data-key"): row
            for row in browser.find_elements(By.CSS_SELECTOR, "#pool-body tr")
        }
        check(rows[attested].find_element(By.CSS_SELECTOR, "a.passport-link"))
        assert not rows[unattested].find_elements(By.TAG_NAME, "a")  # no passport, no link
        assert "⚠ Model served without a passport" in rows[unattested].text
        assert "Model lenet (unattested)" in rows[unattested].text

        rows[attested].find_element(By.TAG_NAME, "button").click()
        card = f'#claimed-list article[data-case-id="{attested}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{card} .facts a.passport-link"))
        link = browser.find_element(By.CSS_SELECTOR, f"{card} .facts a.passport-link")
        check(link)
        assert axe_violations(browser) == [], "passport links and the unattested warning"
        screenshot(browser, "doctor-page-model-passport-link")
        # Following it opens a new tab at the passport (the page's CSP governs loads from this
        # page, not where a link leads), and this page stays as it was.
        page = browser.current_window_handle
        link.click()
        wait.until(lambda d: len(d.window_handles) == 2)
        [tab] = [h for h in browser.window_handles if h != page]
        browser.switch_to.window(tab)
        wait.until(lambda d: d.current_url == href)
        browser.close()
        browser.switch_to.window(page)
        assert _same_page(browser)
        assert _script_errors(browser) == []


def test_a_keyboard_alone_claims_decides_and_submits(market, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _, token = market.doctor("Dr Keys")
    low, high = market.case(confidence=0.9), market.case(confidence=0.6)
    with serve(create_app(market.settings)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        # Tab to the token field, type, Enter.
        browser.find_element(By.TAG_NAME, "body").click()  # the page has the keyboard's focus
        for _ in range(8):
            if browser.switch_to.active_element.get_attribute("id") == "token":
                break
            _keys(browser, Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("id") == "token"
        _keys(browser, token, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "live-state").text == "● Live")

        _keys(browser, "c")  # claims the top case: the higher bounty
        card = f'#claimed-list article[data-case-id="{high}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, card))
        wait.until(lambda d: d.switch_to.active_element.get_attribute("data-case-id") == high)
        _keys(browser, "n")  # no tumour ... then changes their mind
        _keys(browser, "t")
        checked = browser.find_element(By.CSS_SELECTOR, f"{card} input:checked")
        assert checked.get_attribute("value") == "tumor"
        _keys(browser, "s")  # asks first
        dialog = wait.until(lambda d: d.find_element(By.ID, "confirm").is_displayed())
        assert dialog and "tumour" in browser.find_element(By.ID, "confirm-text").text
        screenshot(browser, "doctor-page-confirm")
        _keys(browser, Keys.ESCAPE)  # go back: nothing sent
        wait.until(lambda d: not d.find_element(By.ID, "confirm").is_displayed())
        assert "Receipt" not in browser.find_element(By.ID, "status").text
        _keys(browser, "s")
        wait.until(lambda d: d.find_element(By.ID, "confirm").is_displayed())
        _keys(browser, Keys.ENTER)
        wait.until(lambda d: "Receipt" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: "Decision sealed" in d.find_element(By.CSS_SELECTOR, card).text)
        # The other case is still claimable from the keyboard.
        assert low[:8] in browser.find_element(By.ID, "pool-body").text
        _keys(browser, "c")
        wait.until(
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#claimed-list article[data-case-id="{low}"]'
            )
        )
    market.session.expire_all()
    votes = market.session.execute(select(Vote.case_id, Vote.label)).all()
    assert [tuple(v) for v in votes] == [(high, "tumor")]  # one vote, the confirmed one


def test_no_serious_accessibility_violations_on_desktop_phone_and_at_200_percent(
    market, browser
) -> None:
    from selenium.webdriver.common.by import By

    _, token = market.doctor("Dr Axe")
    others = [market.doctor(f"Dr Other {i}")[1] for i in range(2)]
    settled_case = market.case(confidence=0.7)
    open_cases = [market.case(confidence=c) for c in (0.6, 0.8)]
    with serve(create_app(market.settings)) as url:
        api = Api(url)
        browser.get(url + "/")
        assert axe_violations(browser) == [], "sign-in page"
        screenshot(browser, "doctor-page-sign-in")
        # A settled case in the history (so the charts show), one case on the panel.
        for t in (token, *others):
            assert api("POST", f"/api/cases/{settled_case}/claim", t).status_code == 201
            vote = {"case_id": settled_case, "label": "tumor"}
            assert api("POST", "/decision", t, json=vote).status_code == 201
        assert api("POST", f"/api/cases/{open_cases[0]}/claim", token).status_code == 201
        wait = _sign_in(browser, url, token)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-reputation polyline"))
        wait.until(
            lambda d: d.find_elements(
                By.CSS_SELECTOR, "#claimed-list .viewer-link, #claimed-list .viewer-wait"
            )
        )
        assert axe_violations(browser) == [], "workspace"
        screenshot(browser, "doctor-page-desktop")
        card = f'#claimed-list article[data-case-id="{open_cases[0]}"]'
        browser.find_element(By.CSS_SELECTOR, f"{card} input[value=no_tumor]").click()
        browser.find_element(By.CSS_SELECTOR, f"{card} form button").click()
        assert axe_violations(browser) == [], "confirmation dialog"
        browser.find_element(By.CSS_SELECTOR, "#confirm button.secondary").click()

        for name, (width, height, scale, mobile) in {
            "phone-390px": (390, 844, 3, True),
            "zoom-200-percent": (640, 700, 2, False),  # a 1280 px window at 200 % zoom
        }.items():
            _emulate(browser, width, height, scale, mobile)
            assert browser.execute_script("return window.innerWidth;") == width
            assert _fits(browser), name
            # Every control is still there to use: the claim button, the decision form.
            claim = browser.find_element(By.CSS_SELECTOR, "#pool-body button")
            submit = browser.find_element(By.CSS_SELECTOR, f"{card} form button")
            for control in (claim, submit):
                box = json.loads(
                    browser.execute_script(
                        "return JSON.stringify(arguments[0].getBoundingClientRect());", control
                    )
                )
                assert box["width"] > 0 and box["right"] <= width + 1, (name, box)
            assert axe_violations(browser) == [], name
            screenshot(browser, f"doctor-page-{name}")
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert _same_page(browser)
        assert _script_errors(browser) == []
