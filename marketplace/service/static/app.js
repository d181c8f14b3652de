// Doctor page: token in sessionStorage, everything else from the JSON API of this server, kept
// live by GET /api/events (server-sent events read with a streamed fetch, so the token goes in
// the Authorization header, never in a URL).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "crypto-doctor-token";
const LABELS = { tumor: "tumour", no_tumor: "no tumour" };

const state = { me: null, pool: null, claims: null, history: null, stream: null, signedIn: false };

function say(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// Live news (new cases, escalations, settlements): its own polite live region, so it never
// hides the answer to the doctor's own last action in the status line.
function announce(lines) {
  if (!lines.length) return;
  $("news").textContent = lines.join(" ");
}

function authHeaders() {
  return { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
}

async function api(path, options = {}) {
  const headers = authHeaders();
  if (options.body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { ...options, headers });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(data.detail || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

const short = (id) => id.slice(0, 8);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const label = (value) => LABELS[value] || value || "–";
const credits = (n) => n.toLocaleString() + " credits";

// "in 3 h 20 min" / "2 min ago": how long until a deadline.
function untilText(iso) {
  if (!iso) return "no deadline";
  const ms = new Date(iso) - Date.now();
  const minutes = Math.round(Math.abs(ms) / 60000);
  const text = minutes >= 120 ? Math.round(minutes / 60) + " h"
    : minutes >= 60 ? "1 h " + (minutes - 60) + " min" : minutes + " min";
  return ms >= 0 ? "in " + text : text + " ago";
}

function cell(row, text, cls, heading) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (heading) td.dataset.label = heading;
  row.appendChild(td);
  return td;
}

// "0x1234…abcd": a passport id (a chain address) short enough for a table cell.
const shortAddress = (id) => (id.length > 12 ? id.slice(0, 6) + "…" + id.slice(-4) : id);

// Only an http(s) address may become a link's href (never javascript: or data:).
function safeHref(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

// Which model predicted the case, linked to its readable passport (the Ocean service's page,
// opened in its own tab) when the API gives the link.
function modelFact(c) {
  const fact = { text: "Model " + c.model_version };
  if (c.passport_id) fact.text += " · passport " + shortAddress(c.passport_id);
  const href = c.passport_id && c.passport_url ? safeHref(c.passport_url) : null;
  if (href) {
    fact.href = href;
    fact.label = "The model's passport " + c.passport_id + " (opens in a new tab)";
  }
  return fact;
}

// Facts of a case card or row, as {text, href?, label?, flag?}: what the model flagged and
// which model, when the API says so.
function flags(c) {
  const out = [];
  if (c.unfamiliar === true) {
    out.push({ text: "⚠ Unfamiliar image: the model's confidence is not trusted", flag: true });
  }
  if (c.model_version) out.push(modelFact(c));
  if (c.model_attested === false) {
    out.push({ text: "⚠ Model served without a passport: no owner attests it", flag: true });
  }
  if (c.escalation_level) out.push({ text: "Escalated ×" + c.escalation_level });
  return out;
}

// One fact as DOM: a text node, or a link to another origin that opens in a new tab without
// giving that page a handle on this one (rel=noopener noreferrer). Never innerHTML.
function factNode(fact) {
  if (!fact.href) return document.createTextNode(fact.text);
  const a = document.createElement("a");
  a.className = "passport-link";
  a.href = fact.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.textContent = fact.text;
  a.title = fact.label;  // a description: the link's name stays its visible text
  return a;
}

// Show `facts` in `el` separated by " · ", rebuilt only when they change (a focused link
// keeps its focus through live updates).
function showFacts(el, facts) {
  const key = JSON.stringify(facts);
  if (el.dataset.facts === key) return;
  el.dataset.facts = key;
  el.replaceChildren(...facts.flatMap((f, i) => (i ? [" · ", factNode(f)] : [factNode(f)])));
}

// Keep `container`'s children in the order of `items`, one per key: existing ones are updated
// in place (focus, typed notes and chosen labels survive live updates), new ones made.
function syncKeyed(container, items, key, make, update) {
  const existing = new Map();
  for (const el of container.children) if (el.dataset.key) existing.set(el.dataset.key, el);
  const wanted = items.map((item) => {
    let el = existing.get(key(item));
    if (!el) { el = make(item); el.dataset.key = key(item); }
    update(el, item);
    existing.delete(key(item));
    return el;
  });
  for (const stale of existing.values()) stale.remove();
  wanted.forEach((el, i) => {
    if (container.children[i] !== el) container.insertBefore(el, container.children[i] || null);
  });
}

// --- profile and history at a glance

function renderProfile(me) {
  $("me-name").textContent = me.display_name + " (" + me.specialty + ")";
  $("me-reputation").textContent = me.reputation;
  $("me-tier").textContent = me.tier;
  $("me-reliability").textContent = (me.reliability * 100).toFixed(0) + "%";
  $("me-balance").textContent = credits(me.balance);
  $("me-id").textContent = me.doctor_id;
  $("me-unlocks").textContent =
    (me.bounty_limit === null
      ? "Tier " + me.tier + " admits every bounty."
      : "Tier " + me.tier + " admits bounties up to " + credits(me.bounty_limit) + ".") +
    " Agreeing with a panel's diagnosis raises your reputation, dissenting lowers it.";
  const box = $("tier-progress-box");
  box.hidden = me.next_tier_reputation === null;
  if (me.next_tier_reputation !== null) {
    const missing = Math.max(0, me.next_tier_reputation - me.reputation);
    $("tier-progress-label").textContent = missing + " reputation points to tier " + (me.tier + 1) +
      " (at " + me.next_tier_reputation + ")";
    $("tier-progress").max = me.next_tier_reputation;
    $("tier-progress").value = Math.min(me.reputation, me.next_tier_reputation);
  }
}

async function refreshTrack() {
  const record = await api("/api/me/track-record");
  const shown = renderTrack($("track-charts"), record, state.me);
  $("track-empty").hidden = shown;
  $("me-agreement").textContent = record.settled
    ? Math.round((100 * record.agreed) / record.settled) + "% (" + record.agreed + " of " + record.settled + ")"
    : "–";
  $("me-agreement").title = "Agreement with the final diagnosis of the cases you voted on";
  $("me-taught").textContent = record.taught_serving_model === 1
    ? "1 of your settled cases"
    : record.taught_serving_model + " of your settled cases";
  $("me-taught").title = "Settled cases you voted on whose patients consented and that the " +
    "model serving now learned from (encrypted fine-tuning)";
}

// --- the pool

function renderPool(cases) {
  const body = $("pool-body");
  $("pool-empty").hidden = cases.length > 0;
  $("pool-count").textContent = cases.length ? "(" + cases.length + ")" : "";
  syncKeyed(body, cases, (c) => c.case_id, (c) => {
    const tr = document.createElement("tr");
    const id = cell(tr, short(c.case_id), "id", "Case");
    id.title = c.case_id;
    cell(tr, "", "num", "Bounty");
    cell(tr, "", "", "Deadline");
    cell(tr, "", "notes", "Notes");
    const td = cell(tr, "");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "Claim";
    btn.setAttribute("aria-label", "Claim case " + short(c.case_id));
    btn.addEventListener("click", () => claim(c.case_id));
    td.appendChild(btn);
    return tr;
  }, (tr, c) => {
    tr.children[1].textContent = credits(c.bounty) + (c.escalation_level ? " ↑" : "");
    tr.children[2].textContent = untilText(c.review_deadline);
    tr.children[2].title = when(c.review_deadline);
    showFacts(tr.children[3], flags(c));
    tr.classList.toggle("unfamiliar", c.unfamiliar === true);
  });
}

function poolNews(before, after) {
  if (!before) return [];
  const old = new Map(before.map((c) => [c.case_id, c]));
  const news = [];
  for (const c of after) {
    const was = old.get(c.case_id);
    if (!was) news.push("New claimable case " + short(c.case_id) + ": " + credits(c.bounty) + ".");
    else if (c.escalation_level > was.escalation_level) {
      news.push("Case " + short(c.case_id) + " escalated: bounty now " + credits(c.bounty) + ".");
    }
  }
  return news;
}

// --- claimed cases

function currentCard() {
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("#claimed-list article") : null;
  if (focused) return focused;
  return document.querySelector("#claimed-list article:not(.voted)") ||
    document.querySelector("#claimed-list article");
}

function markCurrent() {
  const current = currentCard();
  for (const card of document.querySelectorAll("#claimed-list article")) {
    card.classList.toggle("current", card === current);
    if (card === current) card.setAttribute("aria-current", "true");
    else card.removeAttribute("aria-current");
  }
}

function makeCard(c) {
  const card = $("claimed-card").content.firstElementChild.cloneNode(true);
  card.dataset.caseId = c.case_id;
  const titleId = "case-" + c.case_id;
  card.querySelector(".case-title").id = titleId;
  card.setAttribute("aria-labelledby", titleId);
  const form = card.querySelector("form");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    confirmDecision(c.case_id, form);
  });
  // The image is shown by the clinic's viewer (its origin, the doctor's own key), not here.
  const link = card.querySelector(".viewer-link");
  const waiting = card.querySelector(".viewer-wait");
  api("/api/cases/" + c.case_id + "/image-link")
    .then((answer) => {
      link.href = answer.url;
      link.setAttribute("aria-label", "Open the image in the clinic's viewer, case " + short(c.case_id) + " (new tab)");
      link.hidden = false;
      waiting.hidden = true;
    })
    .catch(() => { waiting.textContent = "Link to the clinic's viewer unavailable."; });
  return card;
}

function updateCard(card, c) {
  card.querySelector(".case-title").textContent = "Case " + short(c.case_id) + " · " + credits(c.bounty);
  const facts = card.querySelector(".facts");
  const items = [
    { text: "Deadline " + untilText(c.review_deadline) + " (" + when(c.review_deadline) + ")" },
    ...flags(c),
  ];
  const key = JSON.stringify(items);
  if (facts.dataset.facts !== key) {  // unchanged: a focused link keeps its focus
    facts.dataset.facts = key;
    facts.replaceChildren(...items.map((fact) => {
      const li = document.createElement("li");
      li.appendChild(factNode(fact));
      if (fact.flag) li.className = "flag";
      return li;
    }));
  }
  card.classList.toggle("voted", c.voted);
  const form = card.querySelector("form");
  const receipt = card.querySelector(".receipt");
  const model = card.querySelector(".model");
  if (c.voted) {
    form.hidden = true;
    receipt.hidden = false;
    receipt.textContent = "Decision sealed. Receipt: " + c.receipt;
    model.hidden = !c.model_label;
    model.textContent = c.model_label ? "The model said: " + label(c.model_label) + "." : "";
  } else {
    form.hidden = false;
    receipt.hidden = true;
    model.hidden = true;
  }
}

function renderClaimed(cases) {
  const list = $("claimed-list");
  let empty = list.querySelector(".empty");
  if (!cases.length && !empty) {
    empty = document.createElement("p");
    empty.className = "help empty";
    empty.dataset.key = "empty";
    empty.textContent = "Claim a case to review it (C claims the top one).";
  }
  syncKeyed(list, cases, (c) => c.case_id, makeCard, updateCard);
  if (!cases.length) list.appendChild(empty);
  markCurrent();
}

// --- settled history

function renderHistory(rows) {
  const body = $("history-body");
  $("history-empty").hidden = rows.length > 0;
  syncKeyed(body, rows, (h) => h.case_id, (h) => {
    const tr = document.createElement("tr");
    cell(tr, short(h.case_id), "id", "Case").title = h.case_id;
    cell(tr, when(h.settled_at), "", "Settled");
    cell(tr, label(h.your_label), h.agreed ? "agreed" : "dissent", "Your vote");
    cell(tr, label(h.model_label), "", "Model");
    cell(tr, label(h.diagnosis), "", "Diagnosis");
    cell(tr, credits(h.paid), "num", "Paid");
    const td = cell(tr, "", "", "Receipts");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "Verify";
    btn.setAttribute("aria-label", "Verify all receipts of case " + short(h.case_id));
    btn.addEventListener("click", () => verifyReceipts(h, td));
    td.appendChild(btn);
    return tr;
  }, () => {});
}

function historyNews(before, after) {
  if (!before) return [];
  const known = new Set(before.map((h) => h.case_id));
  return after.filter((h) => !known.has(h.case_id)).map((h) =>
    "Case " + short(h.case_id) + " settled: " + label(h.diagnosis) + "; you " +
    (h.agreed ? "agreed" : "dissented") + (h.paid ? ", paid " + credits(h.paid) : "") + ".");
}

async function sha256Hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// After settlement every vote is disclosed with its salt: recompute every receipt here,
// check that ours is among them with our label, and that the diagnosis matches the votes.
async function verifyReceipts(h, td) {
  try {
    const d = await api("/api/cases/" + h.case_id + "/disclosure");
    let valid = 0;
    for (const v of d.votes) {
      if (await sha256Hex("crypto-doctor-vote|" + h.case_id + "|" + v.label + "|" + v.salt) === v.receipt) valid++;
    }
    const mine = d.votes.some((v) => v.receipt === h.your_receipt && v.label === h.your_label);
    const counts = {};
    for (const v of d.votes) counts[v.label] = (counts[v.label] || 0) + 1;
    const top = Math.max(...Object.values(counts));
    const consistent = counts[d.diagnosis] === top || d.votes.length === 0;
    const ok = valid === d.votes.length && mine;
    td.textContent = (ok ? "✓ " : "✗ ") + valid + "/" + d.votes.length + " receipts valid" +
      (mine ? ", yours included" : ", yours missing") + (consistent ? "" : " · diagnosis differs from the vote plurality (reliability-weighted)");
    td.className = ok ? "agreed" : "dissent";
  } catch (err) {
    td.textContent = "Could not verify: " + err.message;
    td.className = "dissent";
  }
}

// --- applying the view (from the stream or from a plain refresh)

function apply(name, data) {
  if (name === "me") {
    state.me = data;
    renderProfile(data);
  } else if (name === "pool") {
    announce(poolNews(state.pool, data.cases));
    state.pool = data.cases;
    renderPool(data.cases);
  } else if (name === "claims") {
    state.claims = data.cases;
    renderClaimed(data.cases);
  } else if (name === "history") {
    announce(historyNews(state.history, data.settled));
    state.history = data.settled;
    renderHistory(data.settled);
    refreshTrack().catch(() => {});
  }
}

async function refresh() {
  const [me, pool, claims, history] = await Promise.all([
    api("/api/me"), api("/api/pool"), api("/api/claims"), api("/api/me/history"),
  ]);
  apply("me", me);
  apply("pool", pool);
  apply("claims", claims);
  apply("history", history);
}

// --- the live stream

function liveState(text, ok) {
  const el = $("live-state");
  el.hidden = false;
  el.textContent = text;
  el.classList.toggle("off", !ok);
}

// Parse text/event-stream blocks ("event: x\ndata: {...}\n\n") from a streamed fetch.
async function readStream(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

async function followEvents() {
  let delay = 1000;
  while (state.signedIn) {
    const controller = new AbortController();
    state.stream = controller;
    try {
      const res = await fetch("/api/events", {
        headers: { ...authHeaders(), Accept: "text/event-stream" },
        signal: controller.signal,
        cache: "no-store",
      });
      if (res.status === 401) { signOut("Your token is no longer valid: sign in again."); return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      await readStream(res, (name, data) => {
        if (name === "ready") { liveState("● Live", true); delay = 1000; return; }
        apply(name, data);
      });
    } catch (err) {
      if (!state.signedIn) return;
    }
    liveState("○ Reconnecting…", false);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

// --- actions

async function claim(caseId) {
  try {
    await api("/api/cases/" + caseId + "/claim", { method: "POST" });
    say("Case " + short(caseId) + " claimed: it is now on your panel.");
    await refresh();
    const card = document.querySelector('#claimed-list article[data-case-id="' + caseId + '"]');
    if (card) { card.focus(); markCurrent(); }
  } catch (err) {
    say("Could not claim: " + err.message, true);
    await refresh().catch(() => {});
  }
}

function confirmDecision(caseId, form) {
  const choice = new FormData(form).get("label");
  if (!choice) {
    say("Choose a diagnosis first (T: tumour, N: no tumour).", true);
    form.querySelector("input[type=radio]").focus();
    return;
  }
  const dialog = $("confirm");
  $("confirm-text").textContent = "Case " + short(caseId) + ": " + label(choice) + ".";
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue === "submit") decide(caseId, form);
    else form.querySelector("input[name=label]:checked").focus();
  };
  dialog.showModal();
  $("confirm-submit").focus();
}

async function decide(caseId, formEl) {
  const form = new FormData(formEl);
  const choice = form.get("label");
  const note = (form.get("note") || "").trim();
  try {
    const r = await api("/decision", {
      method: "POST",
      body: JSON.stringify({ case_id: caseId, label: choice, note: note || null }),
    });
    say("Decision submitted for case " + short(caseId) + ". Receipt " + r.receipt);
    await refresh();
    const next = document.querySelector("#claimed-list article:not(.voted)");
    (next || $("claimed-title")).focus();
    markCurrent();
  } catch (err) {
    say("Decision refused: " + err.message, true);
  }
}

// --- keyboard

function moveCurrent(step) {
  const cards = [...document.querySelectorAll("#claimed-list article")];
  if (!cards.length) return;
  const at = cards.indexOf(currentCard());
  const next = cards[(at + step + cards.length) % cards.length];
  next.focus();
  markCurrent();
}

function choose(value) {
  const card = currentCard();
  const radio = card && !card.classList.contains("voted")
    ? card.querySelector('input[value="' + value + '"]') : null;
  if (!radio) { say("No case waiting for your decision.", true); return; }
  radio.checked = true;
  radio.focus();
  markCurrent();
  say("Case " + short(card.dataset.caseId) + ": " + label(value) + " chosen. S submits.");
}

function onKey(ev) {
  if (!state.signedIn || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if ($("confirm").open) return;
  const target = ev.target;
  if (target.closest("textarea, select") || (target.matches("input") && target.type !== "radio")) return;
  const key = ev.key.toLowerCase();
  const card = currentCard();
  const actions = {
    c: () => {
      const top = state.pool && state.pool[0];
      if (top) claim(top.case_id); else say("No claimable case right now.", true);
    },
    t: () => choose("tumor"),
    n: () => choose("no_tumor"),
    s: () => {
      if (card && !card.classList.contains("voted")) card.querySelector("form").requestSubmit();
      else say("No case waiting for your decision.", true);
    },
    v: () => {
      const link = card && card.querySelector(".viewer-link");
      if (link && !link.hidden) window.open(link.href, "_blank", "noopener,noreferrer");
      else say("No image link for the current case yet.", true);
    },
    j: () => moveCurrent(1),
    k: () => moveCurrent(-1),
  };
  if (!actions[key]) return;
  ev.preventDefault();
  actions[key]();
}

// --- signing in and out

function signOut(message) {
  state.signedIn = false;
  if (state.stream) state.stream.abort();
  sessionStorage.removeItem(TOKEN_KEY);
  if (message) sessionStorage.setItem("crypto-doctor-message", message);
  location.reload();
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await refresh();
    state.signedIn = true;
    $("sign-in").hidden = true;
    $("workspace").hidden = false;
    $("sign-out").hidden = false;
    say("Signed in.");
    $("claimed-title").focus();
    markCurrent();
    followEvents();
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    say(err.status === 401 ? "Unknown token." : "Sign-in failed: " + err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  document.addEventListener("keydown", onKey);
  document.addEventListener("focusin", () => { if (state.signedIn) markCurrent(); });
  const message = sessionStorage.getItem("crypto-doctor-message");
  if (message) { sessionStorage.removeItem("crypto-doctor-message"); say(message, true); }
  if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));
});
