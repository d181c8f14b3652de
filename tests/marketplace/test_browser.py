"""The doctor page in real headless Chromium: sign in, claim, view the image, decide."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from infra.messaging import generate_key, public_key
from marketplace import doctors
from marketplace.domain.consensus import PanelRule
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.image_links import verify_image_signature
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage import make_engine, make_sessionmaker, migrate
from tests.marketplace.flows import open_case
from tests.marketplace.helpers import T0
from tests.marketplace.servers import serve

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MARKET_KEY = generate_key()
SCREENSHOT = Path("/tmp/crypto-doctor-doctor-page.png")


def _png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("L", (224, 224), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 20, 194, 204), fill=90)
    draw.ellipse((120, 70, 160, 110), fill=220)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_server(hits: list[str]) -> web.Application:
    """Stands in for the clinic's GET /image/{case_id}: it checks the link with the
    marketplace's public key (real signature check) and serves a real PNG."""
    png = _png()

    async def image(request: web.Request) -> web.Response:
        q = request.query
        ok = verify_image_signature(
            public_key(MARKET_KEY),
            request.match_info["case_id"],
            q.get("doctor", ""),
            q.get("expires", ""),
            q.get("sig", ""),
            time.time(),
        )
        if not ok:
            return web.json_response(
                {"error": "bad_signature", "detail": "invalid link"}, status=403
            )
        hits.append(request.match_info["case_id"])
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/image/{case_id}", image)
    return app


@pytest.fixture
def browser(tmp_path) -> Iterator[object]:
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
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_doctor_signs_in_claims_views_and_decides(browser, tmp_path) -> None:
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
    hits: list[str] = []
    wait = WebDriverWait(browser, 20)
    with serve(image_server(hits)) as image_url:
        settings = MarketplaceSettings(
            db_url=db_url, signing_key=MARKET_KEY, patient_base_url=image_url, policy=policy
        )
        with serve(create_app(settings)) as url:
            browser.get(url + "/")
            browser.find_element(By.ID, "token").send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "me-name"), "Dr Browser"))
            rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pool-body tr"))
            assert len(rows) == 2 and first[:8] in rows[0].text  # highest bounty first

            rows[0].find_element(By.TAG_NAME, "button").click()
            card = wait.until(
                ec.presence_of_element_located(
                    (By.CSS_SELECTOR, f'article[data-case-id="{first}"]')
                )
            )
            wait.until(
                lambda d: d.execute_script(
                    "const i = document.querySelector('article .scan');"
                    "return i.complete && i.naturalWidth === 224;"
                )
            )
            assert hits == [first]
            card.find_element(By.CSS_SELECTOR, "input[value=tumor]").click()
            card.find_element(By.TAG_NAME, "textarea").send_keys("enhancing lesion, left")
            card.find_element(By.CSS_SELECTOR, "form button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Receipt"))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history-body tr"))
            history = browser.find_element(By.ID, "history-body").text
            assert first[:8] in history and "tumor" in history
            # Check every disclosed receipt in the browser (Web Crypto SHA-256).
            browser.find_element(By.CSS_SELECTOR, "#history-body tr button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "history-body"), "receipts valid"))
            assert (
                "✓ 1/1 receipts valid, yours included"
                in browser.find_element(By.ID, "history-body").text
            )
            balance = browser.find_element(By.ID, "me-balance").text
            assert balance == f"{price_bounty(0.7)} credits"  # the one-seat panel's whole escrow

            # Claim the second case too, so the screenshot shows a case under review.
            browser.find_element(By.CSS_SELECTOR, "#pool-body tr button").click()
            wait.until(
                ec.presence_of_element_located(
                    (By.CSS_SELECTOR, f'article[data-case-id="{second}"]')
                )
            )
            wait.until(
                lambda d: (
                    len(hits) == 2
                    and d.execute_script(
                        "return document.querySelector('article .scan').naturalWidth === 224;"
                    )
                )
            )
            browser.save_screenshot(str(SCREENSHOT))
    profile = doctors.doctor_profile(session, doctor_id)
    assert profile.balance == price_bounty(0.7) and profile.reputation > 150
    session.close()
    engine.dispose()
