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
from tests.accessibility import axe_violations
from tests.artifacts import screenshot
from tests.marketplace.servers import serve
from tests.marketplace.test_browser import chromium
from tests.predictor.orgs import Organisations, post_message, seat_message, submit

pytestmark = pytest.mark.browser

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
    """The shown image's own width (the viewer's readout) once drawn and visible; 0 before."""
    return int(
        browser.execute_script(
            "const f = document.getElementById('figure');"
            "const m = /^Image (\\d+) × (\\d+) px/.exec(document.getElementById('readout').textContent);"
            "return !f.hidden && m ? Number(m[1]) : 0;"
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
        ("/viewer/scan-canvas.js", "text/javascript"),
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
    screenshot(browser, "viewer-refused-not-enrolled")

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
    screenshot(browser, "viewer-image")
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


#: Grey values of a 48 x 48 grid over the middle half of the viewer's canvas (inside the fitted
#: slice), read back from the canvas itself: what the doctor sees, pixel for pixel.
_SAMPLE_CANVAS = """
const c = document.getElementById('scan');
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const out = [];
for (let j = 0; j < 48; j++) for (let i = 0; i < 48; i++) {
  const x = Math.floor(c.width * (0.25 + i / 96)), y = Math.floor(c.height * (0.25 + j / 96));
  out.push(data[(y * c.width + x) * 4]);
}
return out;
"""


_LIT_PIXELS = """
const c = document.getElementById('scan');
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let p = 0; p < data.length; p += 4) if (data[p] > 20) lit++;
return lit;
"""


def _pixels(browser: Any) -> list[int]:
    return [int(v) for v in browser.execute_script(_SAMPLE_CANVAS)]


def _readout(browser: Any) -> str:
    return str(browser.find_element("id", "readout").text)


def _enrolled_viewer(orgs: Organisations, clinic: str, browser: Any, case_id: str) -> Any:
    """Enrol the key this browser makes, give it a seat on the case, and open the viewer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{clinic}/viewer")
    public_key = wait.until(lambda d: d.find_element(By.ID, "public-key").get_attribute("value"))
    with _sessions(orgs)() as session:
        store.enrol(
            session,
            doctor_id=DOCTOR,
            name="Dr Viewer",
            licence="GMC 7000003",
            public_key=public_key,
            now=datetime.now(UTC),
        )
    reply = post_message(clinic, seat_message(case_id, DOCTOR, key=orgs.market_key))
    assert reply.status_code == 200, reply.text
    browser.get(f"{clinic}/viewer?case={case_id}&doctor={DOCTOR}")
    wait.until(_shown_width)
    return wait


def test_zoom_pan_window_level_invert_and_reset_change_the_drawn_pixels(
    orgs, clinic, browser, mri_images
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    path = mri_images["yes"][0]
    case = submit(clinic, path)
    wait = _enrolled_viewer(orgs, clinic, browser, case["case_id"])
    with Image.open(path) as original:
        size = original.size
    assert _readout(browser).startswith(f"Image {size[0]} × {size[1]} px")  # full resolution
    assert "window 256, level 128" in _readout(browser)
    fitted, fitted_lit = _pixels(browser), browser.execute_script(_LIT_PIXELS)
    assert len(set(fitted)) > 20  # a slice, not a blank canvas
    body = browser.find_element(By.TAG_NAME, "body")

    # Zoom in twice from the keyboard: the slice grows, the brain covers more of the middle.
    body.send_keys("+")
    body.send_keys("+")
    zoomed = _pixels(browser)
    changed = sum(a != b for a, b in zip(fitted, zoomed, strict=True))
    assert changed > len(fitted) // 3
    assert browser.execute_script(_LIT_PIXELS) > 1.4 * fitted_lit  # 1.25² times the area

    # Pan with the arrow keys on the focused image: the pixels move, the zoom does not.
    canvas = browser.find_element(By.ID, "scan")
    before_pan = _readout(browser)
    canvas.send_keys(Keys.ARROW_LEFT)
    assert _pixels(browser) != zoomed and _readout(browser) == before_pan

    # Reset: exactly the fitted image again.
    body.send_keys("r")
    assert _pixels(browser) == fitted

    # The wheel zooms at the pointer, a drag pans; reset brings the fitted image back.
    ActionChains(browser).scroll_to_element(canvas).scroll_from_origin(
        _wheel_origin(canvas), 0, -200
    ).perform()
    wait.until(lambda d: _pixels(d) != fitted)  # input events reach the page asynchronously
    wheeled = _pixels(browser)
    ActionChains(browser).drag_and_drop_by_offset(canvas, 60, 0).perform()
    wait.until(lambda d: _pixels(d) != wheeled)
    browser.find_element(By.ID, "reset").click()
    assert _pixels(browser) == fitted

    # A narrow window (mid tones) pushes the dark greys to black and the bright to white.
    Select(browser.find_element(By.ID, "preset")).select_by_value("mid")
    assert "window 96, level 128" in _readout(browser)
    contrast = _pixels(browser)
    assert sum(v in (0, 255) for v in contrast) > sum(v in (0, 255) for v in fitted) + 100
    # Window/level from the keyboard: Shift+Left narrows the window, Shift+Up raises the level
    # (fewer greys reach white: a darker picture).
    canvas.send_keys(Keys.SHIFT + Keys.ARROW_LEFT)
    assert "window 88, level 128" in _readout(browser)
    canvas.send_keys(Keys.SHIFT + Keys.ARROW_UP)
    assert "window 88, level 132" in _readout(browser)
    assert sum(_pixels(browser)) < sum(contrast)

    # Invert at full range: every drawn pixel is 255 minus what it was (rounding aside).
    body.send_keys("r")
    browser.find_element(By.ID, "invert").click()
    assert browser.find_element(By.ID, "invert").get_attribute("aria-pressed") == "true"
    inverted = _pixels(browser)
    assert max(abs(a + b - 255) for a, b in zip(fitted, inverted, strict=True)) <= 2
    screenshot(browser, "viewer-inverted")
    body.send_keys("0")
    assert _pixels(browser) == fitted

    # 1 shows one image pixel per screen pixel.
    body.send_keys("1")
    assert "zoom 100 % of actual size" in _readout(browser)
    body.send_keys("+")
    screenshot(browser, "viewer-zoomed")
    assert axe_violations(browser) == []  # serious or critical ones

    # On a phone (390 px wide) the tools wrap and the slice still fits its box.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True},
    )
    body.send_keys("r")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;"
    )
    assert _readout(browser).startswith(f"Image {size[0]} × {size[1]} px")
    screenshot(browser, "viewer-phone-390px")
    assert [m for m in _page_problems(browser) if "favicon" not in m] == []


def _wheel_origin(element: Any) -> Any:
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    return ScrollOrigin.from_element(element)
