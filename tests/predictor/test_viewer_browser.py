"""The clinic's viewer page in real headless Chromium, against a real clinic app.

The browser makes the doctor's key on the clinic's origin; the test plays the clinic's staff
(enrolment, revocation through ``predictor.access.store``) and the marketplace (a seat.granted
message sealed with the market key), and checks what the doctor and the patient see.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from infra.messaging import generate_key
from infra.net import free_port
from predictor.access import store
from predictor.access.protocol import load_public_key
from predictor.clinic.store import clinic_sessions
from predictor.viewer import CSP, add_viewer_routes
from tests.marketplace.servers import serve
from tests.marketplace.test_browser import chromium
from tests.predictor.orgs import Organisations, post_message, seat_message, submit

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/crypto-doctor-viewer.png")
REFUSED_SCREENSHOT = Path("/tmp/crypto-doctor-viewer-refused.png")
DOCTOR = "0123456789abcdef0123456789abcdef"  # the doctor's id at the marketplace


@pytest.fixture
def orgs(tmp_path: Path) -> Organisations:
    return Organisations(tmp_path, generate_key(), generate_key(), free_port(), free_port())


@pytest.fixture
def clinic(orgs: Organisations) -> Iterator[str]:
    app, close = orgs.clinic_app()
    if not any(getattr(r.resource, "canonical", None) == "/viewer" for r in app.router.routes()):
        add_viewer_routes(app)  # until create_patient_app mounts the viewer itself
    try:
        with serve(app, port=orgs.clinic_port) as url:
            yield url
    finally:
        close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _sessions(orgs: Organisations) -> Any:
    return clinic_sessions(f"sqlite:///{orgs.clinic_db}")


def _audit(clinic: str, case: dict) -> list[dict]:
    reply = requests.get(
        f"{clinic}/case/{case['case_id']}/access",
        headers={"Authorization": f"Bearer {case['patient_token']}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["accesses"]


def _shown_width(browser: Any) -> int:
    """The displayed image's natural width once loaded and visible; 0 before."""
    return int(
        browser.execute_script(
            "const f = document.getElementById('figure'), i = document.getElementById('scan');"
            "return !f.hidden && i.complete ? i.naturalWidth : 0;"
        )
    )


def _refusal(browser: Any) -> str:
    return str(
        browser.execute_script(
            "const r = document.getElementById('refusal');"
            "return r.hidden ? '' : r.textContent.replace(/\\s+/g, ' ');"
        )
    )


def _page_problems(browser: Any) -> list[str]:
    """Console errors since the last call, CSP violations included (inline code would be one)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_the_viewer_serves_only_its_own_files_under_a_strict_policy(clinic) -> None:
    for path, kind in (
        ("/viewer", "text/html"),
        ("/viewer/viewer.js", "text/javascript"),
        ("/viewer/viewer.css", "text/css"),
    ):
        reply = requests.get(clinic + path, timeout=10)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith(kind)
        assert reply.headers["Content-Security-Policy"] == CSP
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Cache-Control"] == "no-store"
        assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
    for other in ("/viewer/viewer.html", "/viewer/..%2fviewer.py", "/viewer/x.js"):
        assert requests.get(clinic + other, timeout=10).status_code == 404


def test_a_doctor_enrols_the_viewers_key_then_sees_the_image_until_revoked(
    orgs, clinic, browser, mri_images
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)  # a deadline, generous for loaded machines
    path = mri_images["yes"][0]
    case = submit(clinic, path)
    case_id = case["case_id"]
    link = f"{clinic}/viewer?case={case_id}&doctor={DOCTOR}"

    # First visit: the browser makes its key; the page shows the public half to enrol.
    browser.get(f"{clinic}/viewer")
    public_key = wait.until(lambda d: d.find_element(By.ID, "public-key").get_attribute("value"))
    load_public_key(public_key)  # a P-256 SPKI, as the clinic's enrolment expects
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "Give this key and your marketplace doctor id to the clinic to be enrolled" in page
    assert _stored_private_key_is_unexportable(browser)

    # Not enrolled yet: the clinic refuses, and the page says what to do.
    browser.get(link)
    wait.until(_refusal)
    assert "not enrolled you yet" in _refusal(browser) and "not_enrolled" in _refusal(browser)
    assert browser.find_element(By.ID, "doctor-id").get_attribute("value") == DOCTOR
    browser.save_screenshot(str(REFUSED_SCREENSHOT))

    # The clinic enrols the key the page showed; the marketplace grants a seat.
    with _sessions(orgs)() as session:
        store.enrol(
            session,
            doctor_id=DOCTOR,
            name="Dr Viewer",
            licence="GMC 7000002",
            public_key=public_key,
            now=datetime.now(UTC),
        )
    reply = post_message(clinic, seat_message(case_id, DOCTOR, key=orgs.market_key))
    assert reply.status_code == 200, reply.text

    browser.get(link)
    width = wait.until(_shown_width)
    with Image.open(path) as original:
        assert width == original.width
    assert _refusal(browser) == ""
    browser.save_screenshot(str(SCREENSHOT))
    assert [(a["doctor"], a["result"]) for a in _audit(clinic, case)] == [
        (DOCTOR, "not_enrolled"),
        (DOCTOR, "served"),
    ]

    # Revoked (say the laptop was lost): a reload is refused. The link names only the case
    # now: the page remembers the doctor id.
    with _sessions(orgs)() as session:
        assert store.revoke(session, doctor_id=DOCTOR, now=datetime.now(UTC))
    browser.get(f"{clinic}/viewer?case={case_id}")
    wait.until(_refusal)
    assert "revoked" in _refusal(browser) and _shown_width(browser) == 0

    # A new key, enrolled again, brings the image back; the old one stays useless.
    browser.find_element(By.ID, "new-key").click()
    wait.until(lambda d: d.switch_to.alert).accept()
    wait.until(lambda d: d.find_element(By.ID, "public-key").get_attribute("value") != public_key)
    new_key = browser.find_element(By.ID, "public-key").get_attribute("value")
    with _sessions(orgs)() as session:
        store.enrol(
            session,
            doctor_id=DOCTOR,
            name="Dr Viewer",
            licence="GMC 7000002",
            public_key=new_key,
            now=datetime.now(UTC),
        )
    browser.find_element(By.ID, "retry").click()
    wait.until(_shown_width)
    served = [a for a in _audit(clinic, case) if a["result"] == "served"]
    assert [a["doctor"] for a in served] == [DOCTOR, DOCTOR]
    # The clinic's refusals (401) and the browser's favicon probe, but no CSP violation or
    # script error.
    assert [m for m in _page_problems(browser) if not ("/image/" in m or "favicon" in m)] == []


def _stored_private_key_is_unexportable(browser: Any) -> bool:
    """Read the key pair back from the clinic origin's IndexedDB, as any script there could."""
    return bool(
        browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const open = indexedDB.open("crypto-doctor-viewer");
            open.onsuccess = () => {
              const get = open.result.transaction("keys").objectStore("keys").get("doctor");
              get.onsuccess = async () => {
                const key = get.result.pair.privateKey;
                try {
                  await crypto.subtle.exportKey("pkcs8", key);
                  done(false);
                } catch (err) {
                  done(key.extractable === false && err.name === "InvalidAccessError");
                }
              };
            };
            open.onerror = () => done(false);
            """
        )
    )
