// Doctor page: token in sessionStorage, everything else from the JSON API of this server.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "crypto-doctor-token";

function say(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
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

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function renderProfile(me) {
  $("me-name").textContent = me.display_name + " (" + me.specialty + ")";
  $("me-reputation").textContent = me.reputation;
  $("me-tier").textContent = me.tier;
  $("me-unlocks").textContent =
    (me.bounty_limit === null
      ? "Tier " + me.tier + " admits every bounty."
      : "Tier " + me.tier + " admits bounties up to " + me.bounty_limit + " credits.") +
    (me.next_tier_reputation === null
      ? ""
      : " Reputation " + me.next_tier_reputation + " opens tier " + (me.tier + 1) +
        "; agreeing with a panel's diagnosis raises yours, dissenting lowers it.");
  $("me-reliability").textContent = (me.reliability * 100).toFixed(0) + "%";
  $("me-balance").textContent = me.balance + " credits";
  $("me-id").textContent = me.doctor_id;
}

function renderPool(cases) {
  const body = $("pool-body");
  body.replaceChildren();
  $("pool-empty").hidden = cases.length > 0;
  for (const c of cases) {
    const tr = document.createElement("tr");
    cell(tr, short(c.case_id)).title = c.case_id;
    cell(tr, c.bounty + " credits" + (c.escalation_level ? " ↑" : ""), "num");
    cell(tr, when(c.review_deadline));
    const td = cell(tr, "");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "Claim";
    btn.setAttribute("aria-label", "Claim case " + short(c.case_id));
    btn.addEventListener("click", () => claim(c.case_id));
    td.appendChild(btn);
    body.appendChild(tr);
  }
}

async function renderClaimed(cases) {
  const list = $("claimed-list");
  list.replaceChildren();
  if (!cases.length) {
    const p = document.createElement("p");
    p.className = "help";
    p.textContent = "Claim a case below to review it.";
    list.appendChild(p);
  }
  for (const c of cases) {
    const card = $("claimed-card").content.firstElementChild.cloneNode(true);
    card.dataset.caseId = c.case_id;
    card.querySelector(".case-title").textContent = "Case " + short(c.case_id) + " · " + c.bounty + " credits";
    const form = card.querySelector("form");
    const receipt = card.querySelector(".receipt");
    if (c.voted) {
      form.hidden = true;
      receipt.hidden = false;
      receipt.textContent = "Decision sealed. Receipt: " + c.receipt;
    } else {
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        decide(c.case_id, new FormData(form));
      });
    }
    list.appendChild(card);
    // The image is shown by the clinic's viewer (its origin, the doctor's own key), not here.
    const link = card.querySelector(".viewer-link");
    const waiting = card.querySelector(".viewer-wait");
    api("/api/cases/" + c.case_id + "/image-link")
      .then((answer) => {
        link.href = answer.url;
        link.setAttribute("aria-label", "Open the image of case " + short(c.case_id) + " in the clinic's viewer (new tab)");
        link.hidden = false;
        waiting.hidden = true;
      })
      .catch(() => { waiting.textContent = "Link to the clinic's viewer unavailable."; });
  }
}

function renderHistory(rows) {
  const body = $("history-body");
  body.replaceChildren();
  $("history-empty").hidden = rows.length > 0;
  for (const h of rows) {
    const tr = document.createElement("tr");
    cell(tr, short(h.case_id)).title = h.case_id;
    cell(tr, when(h.settled_at));
    cell(tr, h.your_label.replace("_", " "), h.agreed ? "agreed" : "dissent");
    cell(tr, h.diagnosis.replace("_", " "));
    cell(tr, h.paid + " credits", "num");
    const td = cell(tr, "");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "Verify";
    btn.setAttribute("aria-label", "Verify all receipts of case " + short(h.case_id));
    btn.addEventListener("click", () => verifyReceipts(h, td));
    td.appendChild(btn);
    body.appendChild(tr);
  }
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

async function refresh() {
  const [me, pool, claims, history] = await Promise.all([
    api("/api/me"), api("/api/pool"), api("/api/claims"), api("/api/me/history"),
  ]);
  renderProfile(me);
  renderPool(pool.cases);
  await renderClaimed(claims.cases);
  renderHistory(history.settled);
}

async function claim(caseId) {
  try {
    await api("/api/cases/" + caseId + "/claim", { method: "POST" });
    say("Case " + short(caseId) + " claimed: it is now on your panel.");
    await refresh();
  } catch (err) {
    say("Could not claim: " + err.message, true);
    await refresh().catch(() => {});
  }
}

async function decide(caseId, form) {
  const label = form.get("label");
  if (!label) { say("Choose a diagnosis first.", true); return; }
  const note = (form.get("note") || "").trim();
  try {
    const r = await api("/decision", {
      method: "POST",
      body: JSON.stringify({ case_id: caseId, label, note: note || null }),
    });
    say("Decision submitted for case " + short(caseId) + ". Receipt " + r.receipt);
    await refresh();
  } catch (err) {
    say("Decision refused: " + err.message, true);
  }
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await refresh();
    $("sign-in").hidden = true;
    $("workspace").hidden = false;
    $("sign-out").hidden = false;
    say("Signed in.");
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
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));
});
