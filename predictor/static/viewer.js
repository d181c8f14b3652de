// The clinic's image viewer. It runs on the clinic's origin only: the doctor's ECDSA P-256 key
// is made here (private half non-extractable), kept in this origin's IndexedDB, and used to sign
// each image request exactly as predictor/access/protocol.py's request_message describes.
"use strict";

const $ = (id) => document.getElementById(id);
const DB_NAME = "crypto-doctor-viewer";
const STORE = "keys";
const KEY_NAME = "doctor";
const DOCTOR_KEY = "crypto-doctor-doctor-id";
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const ALGORITHM = { name: "ECDSA", namedCurve: "P-256" };
const SIGNATURE = { name: "ECDSA", hash: "SHA-256" };

// The clinic's refusals (the "error" of its {"error", "detail"} answer) in plain words.
const REFUSALS = {
  not_enrolled:
    "The clinic has not enrolled you yet. Give the clinic your public key (below) and your " +
    "marketplace doctor id to be enrolled, then try again.",
  revoked:
    "The clinic has revoked your key. Make a new key below if you have not already, and ask " +
    "the clinic to enrol it.",
  bad_signature:
    "The clinic could not verify this request with the key it enrolled for you. If you made " +
    "a new key or use another browser, ask the clinic to enrol the key shown below. Also " +
    "check this computer's clock: a request is valid for one minute.",
  replay: "This request was already used. Try again to send a fresh one.",
  no_seat:
    "You hold no seat on this case's panel. Claim the case on the marketplace, then open " +
    "its image again.",
  case_closed: "This case is closed: access to its image ended when it settled.",
  viewer_cap: "This case's image has already been shown to as many doctors as the clinic allows.",
  daily_cap: "You have reached the clinic's daily limit of images. Try again tomorrow.",
  image_not_found: "The clinic has no image for this case.",
};

let scan = null; // the ScanCanvas (scan-canvas.js), made once the page starts

// --- IndexedDB: one record, the CryptoKeyPair (structured-cloned, private half unreadable).

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function withStore(mode, action) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = action(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(req.result);
      // The failed request's own error (e.g. ConstraintError), before the abort names it.
      tx.onerror = () => reject(req.error || tx.error);
      tx.onabort = () => reject(req.error || tx.error);
    });
  } finally {
    db.close();
  }
}

const readKey = () => withStore("readonly", (s) => s.get(KEY_NAME));

async function makeKey() {
  const pair = await crypto.subtle.generateKey(ALGORITHM, false, ["sign", "verify"]);
  return { pair, created: new Date().toISOString() };
}

// The stored key, or a new one on first use. `add` (not `put`): if another tab made one first,
// keep that one.
async function loadOrCreateKey() {
  const stored = await readKey();
  if (stored) return stored;
  const fresh = await makeKey();
  try {
    await withStore("readwrite", (s) => s.add(fresh, KEY_NAME));
    return fresh;
  } catch (err) {
    if (err && err.name === "ConstraintError") return readKey();
    throw err;
  }
}

async function replaceKey() {
  const fresh = await makeKey();
  await withStore("readwrite", (s) => s.put(fresh, KEY_NAME));
  return fresh;
}

// --- Encoding and signing.

function b64url(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function publicKeyText(pair) {
  return b64url(await crypto.subtle.exportKey("spki", pair.publicKey));
}

// predictor/access/protocol.py request_message: the exact bytes the clinic verifies.
function requestMessage(caseId, doctorId, timestampMs) {
  return new TextEncoder().encode(
    "crypto-doctor-image-request\n" + caseId + "\n" + doctorId + "\n" + timestampMs
  );
}

async function signedHeaders(pair, caseId, doctorId) {
  const timestampMs = Date.now();
  // WebCrypto's ECDSA signature is raw r‖s (64 bytes); the clinic accepts it as it is.
  const signature = await crypto.subtle.sign(
    SIGNATURE, pair.privateKey, requestMessage(caseId, doctorId, timestampMs)
  );
  return {
    "X-CD-Doctor": doctorId,
    "X-CD-Timestamp": String(timestampMs),
    "X-CD-Signature": b64url(signature),
  };
}

// --- The page.

function say(text) {
  $("status").textContent = text;
}

function refuse(text, code) {
  say("");
  $("figure").hidden = true;
  $("refusal").hidden = false;
  $("refusal-text").textContent = text;
  $("refusal-code").textContent = code ? "The clinic's answer: " + code : "";
}

function clearImage() {
  $("refusal").hidden = true;
  $("figure").hidden = true;
  scan.unload();
}

// The readout and the controls follow the view.
function showView(view) {
  const percent = scan.actualPercent();
  $("readout").textContent =
    "Image " + scan.imageWidth + " × " + scan.imageHeight + " px · zoom " + percent +
    " % of actual size · window " + view.width + ", level " + view.level +
    (view.inverted ? " · inverted" : "");
  $("window-width").value = view.width;
  $("window-level").value = view.level;
  $("width-value").textContent = view.width;
  $("level-value").textContent = view.level;
  $("preset").value = view.preset;
  $("invert").setAttribute("aria-pressed", String(view.inverted));
}

function bindViewer() {
  scan = new ScanCanvas($("scan"), showView);
  const dragMode = () => document.querySelector('input[name="drag"]:checked').value;
  bindScanControls(scan, dragMode);
  $("zoom-in").addEventListener("click", () => scan.zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => scan.zoomBy(1 / 1.25));
  $("actual-size").addEventListener("click", () => scan.actualSize());
  $("invert").addEventListener("click", () => scan.invert());
  $("reset").addEventListener("click", () => scan.reset());
  $("preset").addEventListener("change", (ev) => {
    if (ev.target.value !== "custom") scan.preset(ev.target.value);
  });
  const fromSliders = () => scan.setWindow(+$("window-width").value, +$("window-level").value);
  $("window-width").addEventListener("input", fromSliders);
  $("window-level").addEventListener("input", fromSliders);
  document.addEventListener("keydown", (ev) => {
    if (!$("figure").hidden && scanShortcut(scan, ev)) ev.preventDefault();
  });
}

function doctorId() {
  return localStorage.getItem(DOCTOR_KEY) || "";
}

function rememberDoctor(id) {
  localStorage.setItem(DOCTOR_KEY, id);
  $("doctor-id").value = id;
}

async function showKey(record) {
  $("public-key").value = await publicKeyText(record.pair);
  $("key-made").textContent = "Key made " + new Date(record.created).toLocaleString() + ".";
}

async function refusalOf(res) {
  const answer = await res.json().catch(() => ({}));
  const code = typeof answer.error === "string" ? answer.error : "HTTP " + res.status;
  const detail = typeof answer.detail === "string" ? answer.detail : res.statusText;
  return { text: REFUSALS[code] || "The clinic refused: " + detail, code: code + " — " + detail };
}

async function showImage(record, caseId) {
  clearImage();
  $("retry").hidden = true;
  const doctor = doctorId();
  if (!doctor) {
    refuse("Enter your marketplace doctor id below, then try again.", "");
    $("retry").hidden = false;
    return;
  }
  say("Asking the clinic for the image of case " + caseId + "…");
  try {
    const headers = await signedHeaders(record.pair, caseId, doctor);
    const res = await fetch("/image/" + encodeURIComponent(caseId), {
      headers, cache: "no-store", credentials: "omit",
    });
    const type = res.headers.get("Content-Type") || "";
    if (!res.ok || !type.startsWith("image/")) {
      const refusal = await refusalOf(res);
      refuse(refusal.text, refusal.code);
    } else {
      const blob = await res.blob();
      $("figure").hidden = false; // laid out first, so the slice fits the box it gets
      await scan.load(blob);
      $("scan").setAttribute("aria-label", "Brain MRI slice of case " + caseId);
      say("");
      return;
    }
  } catch (err) {
    refuse("Could not reach the clinic: " + err.message, "");
  }
  $("retry").hidden = false; // each try is a freshly signed request
}

async function main() {
  $("origin").textContent = location.origin;
  bindViewer();
  if (!window.isSecureContext || !window.crypto || !crypto.subtle || !window.indexedDB) {
    refuse(
      "This page needs a secure connection (https://) and a browser with Web Crypto and " +
      "IndexedDB: ask the clinic for its https:// address.", ""
    );
    $("key-section").hidden = true;
    return;
  }
  const params = new URLSearchParams(location.search);
  const caseId = params.get("case") || "";
  const linkDoctor = params.get("doctor") || "";
  if (ID.test(linkDoctor)) rememberDoctor(linkDoctor);
  else $("doctor-id").value = doctorId();

  let record = await loadOrCreateKey();
  await showKey(record);

  $("doctor-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("doctor-id").value.trim();
    if (!ID.test(id)) { say("A doctor id is letters, digits, '-' and '_' only."); return; }
    rememberDoctor(id);
    say("Doctor id saved.");
  });
  $("copy").addEventListener("click", async () => {
    const field = $("public-key");
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      say("Public key copied.");
    } catch {
      say("Select the key above and copy it (Ctrl+C).");
    }
  });
  $("new-key").addEventListener("click", async () => {
    const sure = confirm(
      "Replace your key? The clinic will refuse your requests until it enrols the new one."
    );
    if (!sure) return;
    record = await replaceKey();
    await showKey(record);
    say("New key made: give it to the clinic to be enrolled again.");
  });

  if (!caseId) {
    $("image-title").textContent = "Image";
    say("Open a case's image from the marketplace's doctor page: its links lead here.");
    return;
  }
  if (!ID.test(caseId)) {
    refuse("This link names no valid case.", "");
    return;
  }
  $("image-title").textContent = "Case " + caseId;
  $("retry").addEventListener("click", () => showImage(record, caseId));
  await showImage(record, caseId);
}

document.addEventListener("DOMContentLoaded", () => {
  main().catch((err) => refuse("The viewer failed to start: " + err.message, ""));
});
