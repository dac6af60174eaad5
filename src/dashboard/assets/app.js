// ramp-ca dashboard: live state over server-sent events, actions through the same service
// as the command line, terminal screens rendered by the server.
"use strict";

// Every path this page calls, from the server's one list (filled in as the script is served).
const ROUTES = __RAMP_ROUTES__;
const route = (name, id) => ROUTES[name].replace("{id}", id);

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// Text from users with its control characters written as escapes, as the server's `shown`
// writes them (`\n`, `\x1b`, `\u{9b}`); `txt` then escapes it for HTML.
const shownText = (s) => String(s ?? "").replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
  const named = { "\n": "\\n", "\r": "\\r", "\t": "\\t" }[c];
  const code = c.charCodeAt(0);
  return named ?? (code < 0x80 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`);
});
const txt = (s) => esc(shownText(s));

let state = null;
let skew = 0; // server clock minus ours, ms
let stream = null;

function now() { return Date.now() + skew; }

function left(until) {
  const ms = new Date(until).getTime() - now();
  if (ms <= 0) return { text: "ended", cls: "now" };
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const text = h ? `${h}h ${String(m).padStart(2, "0")}m ${String(sec).padStart(2, "0")}s` : `${m}m ${String(sec).padStart(2, "0")}s`;
  return { text, cls: ms < 60000 ? "now" : ms < 300000 ? "soon" : "" };
}

function ago(t) {
  const s = Math.max(0, Math.floor((now() - new Date(t).getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return new Date(t).toLocaleString();
}

function clock(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
  return `${(n / 1073741824).toFixed(2)} GiB`;
}

// kind: "good" (done), "info" (done, more to come), anything else an error.
function toast(text, kind) {
  const t = $("#toast");
  t.textContent = text;
  t.className = kind === "good" || kind === true ? "toast good" : kind === "info" ? "toast info" : "toast";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 6000);
}

async function api(path, opts = {}) {
  const headers = { "content-type": "application/json" };
  if (state && opts.method && opts.method !== "GET") headers["x-ramp-csrf"] = state.me.csrf;
  const resp = await fetch(path, { credentials: "same-origin", ...opts, headers });
  const body = resp.headers.get("content-type")?.includes("json") ? await resp.json() : await resp.text();
  if (resp.status === 401) showLogin(body.error || "");
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

function showLogin(why) {
  document.body.classList.add("logged-out");
  $("#login").classList.remove("hidden");
  $("#login-why").textContent = why;
  document.querySelectorAll(".view").forEach((v) => v.classList.add("hidden"));
  if (stream) stream.close();
}

// --- live state -----------------------------------------------------------------------

function connect() {
  stream = new EventSource(route("stream"));
  stream.addEventListener("state", (e) => {
    $("#conn").classList.add("up");
    render(JSON.parse(e.data));
  });
  stream.onerror = () => {
    $("#conn").classList.remove("up");
    // EventSource retries by itself; a 401 means the session is gone.
    api(route("state")).catch(() => {});
  };
}

function stepCell(v) {
  const g = v.grant ?? v;
  const glass = v.break_glass ? ` <span class="tag glass">break-glass</span>` : "";
  return `<span class="tag">${esc(g.contract)}</span> <span class="step">${esc(g.step)}</span>${glass}`;
}

// What approving (or holding) a grant gives: accounts, hosts, and what the certificate allows.
function grantsCell(v) {
  const tags = (xs, cls = "") => xs.map((x) => `<span class="tag${cls}">${esc(x)}</span>`).join("");
  return `<div>${tags(v.principals, v.principals.includes("root") ? " glass" : "")}<span class="muted"> on </span>${tags(v.targets)}</div>` +
    (v.options.length ? `<div class="muted">${v.options.map(esc).join(", ")}</div>` : "");
}

// Rows asking for a reason or a confirmation, by grant id (or "s:" and a session id), kept
// across live updates, and the reason typed so far.
const asking = new Map();
const typed = new Map();
const rowKey = (tr) => tr.dataset.grant ?? `s:${tr.dataset.session}`;
const rowOf = (key) => key.startsWith("s:")
  ? document.querySelector(`#live tr[data-session="${key.slice(2)}"]`)
  : document.querySelector(`#view-access tr[data-grant="${key}"]`);

function render(s) {
  if (s.error) { toast(s.error); return; }
  state = s;
  skew = new Date(s.now).getTime() - Date.now();
  $("#login").classList.add("hidden");
  document.body.classList.remove("logged-out");
  $("#me").innerHTML = `${esc(s.me.user)} <span class="muted">(${esc(s.me.roles.join(", ") || "no roles")})</span>`;
  document.querySelectorAll(".reviewer").forEach((el) => el.classList.toggle("hidden", !s.me.reviewer));
  document.querySelectorAll(".may-review").forEach((el) => el.classList.toggle("hidden", !s.me.may_review));
  // The badge counts what waits for this viewer: requests they may still approve.
  $("#n-access").textContent = s.pending.filter((p) => p.can_approve).length || "";
  $("#n-pending").textContent = s.pending.length;
  $("#n-active").textContent = s.active.length;
  $("#n-live").textContent = s.live.length || "";

  // A reason being typed survives the live update that redraws its row.
  document.querySelectorAll("tr.asking input.reason").forEach((i) => typed.set(rowKey(i.closest("tr")), i.value));
  const pending = $("#pending tbody");
  pending.innerHTML = s.pending.map(({ grant: v, can_approve, can_deny }) => {
    const g = v;
    // An active grant's extension waiting for approvals shows as a request to extend.
    const ext = g.extension;
    const asked = ext ? ext.approvals : g.approvals;
    const approvals = `${asked.length} / ${ext ? ext.approvals_needed : g.approvals_needed}` + (asked.length ? ` <span class="muted">(${asked.map((a) => esc(a.by)).join(", ")})</span>` : "") +
      `<div class="muted">from ${esc(g.approvals_from.join(" or "))}</div>`;
    const ttl = ext ? `extend to ${new Date(ext.end).toLocaleTimeString()}`
      : fmtTtl(g.ttl_secs) + (g.scheduled ? ` from ${new Date(g.scheduled).toLocaleString()}` : "");
    const why = ext ? ext.reason || "" : g.reason || "";
    return `<tr data-grant="${esc(g.id)}"${v.break_glass ? ` class="glass-row"` : ""}>
      <td data-label="requested">${ago(g.requested_at)}</td><td data-label="user"><b>${esc(g.user)}</b></td>
      <td data-label="step">${stepCell(v)}</td><td data-label="grants" class="grants">${grantsCell(v)}</td>
      <td data-label="ttl">${esc(ttl)}</td><td data-label="reason">${esc(why)}</td>
      <td data-label="approvals">${approvals}</td>
      <td class="actions">${can_approve ? `<button class="ok" data-act="approve">Approve</button>` : ""}
        ${can_deny ? `<button class="bad" data-act="deny">${g.user === s.me.user ? "Withdraw" : "Deny"}</button>` : ""}</td></tr>`;
  }).join("");
  $("#pending-empty").classList.toggle("hidden", s.pending.length > 0);
  $("#pending").classList.toggle("hidden", s.pending.length === 0);

  const active = $("#active tbody");
  active.innerHTML = s.active.map(({ grant: v, can_revoke }) => {
    const g = v;
    return `<tr data-grant="${esc(g.id)}">
      <td data-label="time left">${g.state === "scheduled"
        ? `<span class="opens">opens in <span class="left" data-opens="${esc(g.start)}"></span></span>`
        : `<span class="left" data-until="${esc(g.end)}"></span>`}</td><td data-label="user"><b>${esc(g.user)}</b></td>
      <td data-label="step">${stepCell(v)}</td><td data-label="grants" class="grants">${grantsCell(v)}</td>
      <td data-label="reason">${esc(g.reason || "")}</td><td data-label="grant" class="id">${esc(g.id)}</td>
      <td class="actions">${can_revoke ? `<button class="bad" data-act="revoke">Revoke</button>` : ""}</td></tr>`;
  }).join("");
  $("#active-empty").classList.toggle("hidden", s.active.length > 0);
  $("#active").classList.toggle("hidden", s.active.length === 0);
  offer(s.requestable);

  const live = $("#live tbody");
  live.innerHTML = s.live.map((l) => {
    const m = l.session;
    return `<tr data-session="${esc(m.id)}"${l.break_glass ? ` class="glass-row"` : ""}>
      <td data-label="since">${ago(m.start)}</td><td data-label="user"><b>${esc(m.user)}</b></td>
      <td data-label="step">${l.contract ? stepCell(l) : ""}</td><td data-label="where" class="mono">${esc(m.principal)}@${esc(m.target)}</td>
      <td data-label="what" class="mono">${esc(m.kind)}${m.command ? ": " + esc(m.command) : ""}</td><td data-label="reason">${esc(l.reason || "")}</td>
      <td data-label="from" class="mono muted">${esc(m.client)}</td><td data-label="node" class="mono muted">${esc(m.node || "")}</td>
      <td data-label="time left">${l.ends ? `<span class="left" data-until="${esc(l.ends)}"></span>` : ""}</td>
      <td data-label="in / out" class="mono">${bytes(m.bytes_in)} / ${bytes(m.bytes_out)}</td>
      <td class="actions">${s.me.reviewer ? `<button data-act="follow">Watch</button>` : ""}
        ${l.can_end ? `<button class="bad" data-act="end">End</button>` : ""}</td></tr>`;
  }).join("");
  $("#live-empty").classList.toggle("hidden", s.live.length > 0);
  $("#live").classList.toggle("hidden", s.live.length === 0);
  asking.forEach((act, key) => {
    const tr = rowOf(key);
    if (tr) ask(tr, act, true); else asking.delete(key);
  });
  tick();
}

function fmtTtl(secs) {
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return [h && `${h}h`, m && `${m}m`, s && `${s}s`].filter(Boolean).join(" ") || "0s";
}

function tick() {
  document.querySelectorAll("[data-until]").forEach((el) => {
    const l = left(el.dataset.until);
    el.textContent = l.text;
    el.className = "left " + l.cls;
  });
  // A window approved ahead counts down to its start.
  document.querySelectorAll("[data-opens]").forEach((el) => {
    el.textContent = left(el.dataset.opens).text;
  });
}
setInterval(tick, 1000);

// --- actions --------------------------------------------------------------------------

function ask(tr, act, redraw = false) {
  const id = rowKey(tr);
  asking.set(id, act);
  tr.classList.add("asking");
  const cell = tr.querySelector(".actions");
  if (act === "approve") {
    // Break-glass and root are confirmed with what they give spelled out.
    const v = state.pending.find((p) => p.grant.id === id)?.grant;
    const what = v ? `${v.break_glass ? "break-glass " : ""}${esc(v.principals.join(", "))} on ${esc(v.targets.join(", "))}` : esc(id);
    cell.innerHTML = `<div class="confirm">Approve ${what}?</div>
      <button class="ok" data-act="approve-confirm">Approve</button>
      <button data-act="cancel">Cancel</button>`;
    return;
  }
  const label = { revoke: "Revoke", deny: "Deny", end: "End session" }[act];
  const hint = act === "end" ? "reason (the user reads it)" : "reason (required)";
  cell.innerHTML = `<input class="reason" placeholder="${hint}" size="22">
    <button class="bad" data-act="${act}-confirm">${label}</button>
    <button data-act="cancel">Cancel</button>`;
  if (act === "revoke") cascade(id, cell);
  const input = cell.querySelector("input");
  input.value = typed.get(id) ?? "";
  if (!redraw || document.activeElement === document.body) input.focus();
}

// What revoking would reach, said before the confirmation: asked once per row being
// confirmed, kept across live redraws.
const reach = new Map();
async function cascade(id, cell) {
  if (!reach.has(id)) {
    reach.set(id, "");
    try {
      const out = await api(route("revoke", id));
      const c = out.cascade || { ended: [], shortened: [], sessions: [] };
      const also = c.ended.filter((g) => g.id !== id).map((g) => `${esc(g.contract)}/${esc(g.step)} of ${esc(g.user)}`);
      const parts = [];
      if (also.length) parts.push(`also ends ${also.join(", ")}`);
      if (c.shortened.length) parts.push(`shortens ${c.shortened.map((g) => `${esc(g.contract)}/${esc(g.step)}`).join(", ")}`);
      parts.push(c.sessions.length
        ? `cuts ${c.sessions.length} live session${c.sessions.length > 1 ? "s" : ""}: ${c.sessions.map((s) => `${esc(s.user)} on ${esc(s.principal)}@${esc(s.target)}`).join(", ")}`
        : "cuts no live session");
      reach.set(id, `<div class="confirm cascade">Revoking ${parts.join("; ")}.</div>`);
    } catch (err) {
      reach.set(id, `<div class="confirm cascade">${esc(err.message)}</div>`);
    }
    const tr = rowOf(id);
    if (tr && asking.get(id) === "revoke") {
      typed.set(id, tr.querySelector("input.reason")?.value ?? "");
      ask(tr, "revoke", true);
    }
    return;
  }
  cell.insertAdjacentHTML("afterbegin", reach.get(id));
}

// The request form: the contracts this user may ask for, their steps, and what each needs.
function offer(contracts) {
  $("#ask").classList.toggle("hidden", !contracts.length);
  const select = $("#ask-contract");
  const names = contracts.map((c) => c.contract).join(",");
  if (select.dataset.names === names) return;  // unchanged: keep what is being typed
  select.dataset.names = names;
  select.innerHTML = contracts.map((c) => `<option value="${esc(c.contract)}">${esc(c.contract)}</option>`).join("");
  steps();
}
function steps() {
  const c = state.requestable.find((r) => r.contract === $("#ask-contract").value);
  if (!c) return;
  $("#ask-step").innerHTML = c.steps.map((st) => `<option value="${esc(st.name)}">${esc(st.name)} · up to ${esc(st.max_ttl)}` +
    `${st.approvals ? ` · ${st.approvals} approval${st.approvals > 1 ? "s" : ""}` : ""}${st.break_glass ? " · break-glass" : ""}${st.after ? ` · after ${esc(st.after)}` : ""}</option>`).join("");
  $("#ask-reason").placeholder = c.reason_required ? `reason (required${c.reason_example ? ", like " + c.reason_example : ""})` : "reason";
  $("#ask-note").textContent = c.description || "";
}
$("#ask-contract").addEventListener("change", steps);
$("#request").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = Object.fromEntries([...new FormData($("#request")).entries()].filter(([, v]) => v !== ""));
  const button = $("#request button");
  button.disabled = true;
  try {
    const out = await api(route("request"), { method: "POST", body: JSON.stringify(body) });
    const g = out.grant;
    const take = `take its certificate with: ramp-ca sign --grant ${g.id}`;
    if (g.state === "active") {
      toast(`Granted ${g.contract}/${g.step} until ${new Date(g.end).toLocaleTimeString()}: ${take}`, "good");
    } else if (g.state === "scheduled") {
      toast(`Granted ${g.contract}/${g.step} from ${new Date(g.start).toLocaleString()} until ${new Date(g.end).toLocaleString()}: ${take}`, "good");
    } else {
      toast(`Requested ${g.contract}/${g.step}: waiting for ${g.approvals_needed - g.approvals.length} approval(s) from ${g.approvals_from.join(" or ")}; then ${take}`, "info");
    }
    $("#ask-note").textContent = (out.reasons || []).join("; ");
  } catch (err) {
    // The policy's own words: what was refused and why.
    toast(`Refused: ${err.message}`);
    $("#ask-note").textContent = err.message;
  } finally {
    button.disabled = false;
  }
});

// Says what an approval did, in its own colour: granted, still pending, or refused at the end.
function approved(out) {
  const g = out.grant;
  if (g.state === "active") {
    toast(`Approved: ${g.user} holds ${g.contract}/${g.step} until ${new Date(g.end).toLocaleTimeString()}`, "good");
  } else if (g.state === "scheduled") {
    toast(`Approved ahead: ${g.user} holds ${g.contract}/${g.step} from ${new Date(g.start).toLocaleString()}`, "good");
  } else if (g.state === "pending") {
    const left = g.approvals_needed - g.approvals.length;
    toast(`Approved ${g.approvals.length} of ${g.approvals_needed}: still pending (${left} more from ${g.approvals_from.join(" or ")})`, "info");
  } else {
    toast(`Approved, but the request is ${g.state}: ${out.reasons[out.reasons.length - 1] || ""}`);
  }
}

document.addEventListener("click", async (e) => {
  const btn = e.target.closest("button[data-act], .hit[data-act]");
  if (!btn) return;
  const tr = btn.closest("tr");
  const id = tr?.dataset.grant;
  const key = tr ? rowKey(tr) : null;
  const act = btn.dataset.act;
  try {
    const v = state.pending.find((p) => p.grant.id === id)?.grant;
    if (act === "approve" && v && (v.break_glass || v.principals.includes("root"))) {
      ask(tr, "approve");
    } else if (act === "approve" || act === "approve-confirm") {
      btn.disabled = true;
      asking.delete(id);
      approved(await api(route("approve", id), { method: "POST", body: "{}" }));
    } else if (act === "deny" || act === "revoke" || act === "end") {
      ask(tr, act);
    } else if (act === "end-confirm") {
      const reason = tr.querySelector("input.reason").value.trim();
      if (!reason) { toast("A reason is required: the user reads it."); return; }
      btn.disabled = true;
      const session = tr.dataset.session;
      await api(route("end", session), { method: "POST", body: JSON.stringify({ reason }) });
      asking.delete(key);
      typed.delete(key);
      toast(`Ended session ${session}: its user reads why`, "good");
    } else if (act === "deny-confirm" || act === "revoke-confirm") {
      const reason = tr.querySelector("input.reason").value.trim();
      if (!reason) { toast("A reason is required."); return; }
      const what = act.split("-")[0];
      btn.disabled = true;
      await api(route(what, id), { method: "POST", body: JSON.stringify({ reason }) });
      tr.classList.remove("asking");
      asking.delete(id);
      typed.delete(id);
      reach.delete(id);
      toast(`${what === "revoke" ? "Revoked" : "Denied"} ${id}`, "good");
    } else if (act === "cancel") {
      tr.classList.remove("asking");
      reach.delete(key);
      asking.delete(key);
      typed.delete(key);
      render(state);
    } else if (act === "follow") {
      follow(tr.dataset.session);
    } else if (act === "play") {
      play(tr.dataset.session);
    } else if (act === "seek") {
      play(tr.dataset.session, Number(btn.dataset.at));
    }
  } catch (err) {
    btn.disabled = false;
    toast(err.message);
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && e.target.matches("input.reason")) {
    e.target.closest("td").querySelector("button[data-act$=confirm]").click();
  }
  if (e.key === "Escape") closePlayer();
});

// --- views ----------------------------------------------------------------------------

function show() {
  // `#review/ID` is the Review page with that session open.
  const [view, arg] = (location.hash || "#access").slice(1).split("/");
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("hidden", v.id !== `view-${view}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.view === view));
  if (view === "recordings") search();
  if (view === "audit") audit();
  if (view === "review") {
    reviews();
    if (arg) openReview(arg);
  }
}
window.addEventListener("hashchange", show);

function form(sel) {
  return new URLSearchParams([...new FormData($(sel)).entries()].filter(([, v]) => v !== ""));
}

async function search(e) {
  e?.preventDefault();
  try {
    const q = form("#search");
    const rows = await api(`${route("recordings")}?${q}`);
    const text = q.get("text");
    const marker = highlighter(text, q.has("ignore_case"), q.has("regex"));
    const where = { input: "typed", output: "output", command: "command" };
    $("#recs tbody").innerHTML = rows.map((r) => {
      const len = r.end ? clock(new Date(r.end) - new Date(r.start)) : "";
      // Each hit says where it was and, clicked, plays the session from there.
      const hits = (r.hits || []).slice(0, 5).map((h) => `<div class="hit" data-act="seek" data-at="${Number(h.at_ms)}" title="play from here">` +
        `${clock(h.at_ms)} <span class="tag">${where[h.stream] || "output"}</span> ${marker(h.line)}</div>`).join("");
      const damaged = r.damaged ? `<div class="damaged"><span class="tag glass">damaged</span> not searched: ${esc(r.damaged)}</div>` : "";
      return `<tr data-session="${esc(r.id)}"${r.damaged ? ` class="damaged-row"` : ""}><td data-label="started">${ago(r.start)}<div class="id">${esc(r.id)}</div>${damaged}</td><td data-label="user"><b>${esc(r.user)}</b></td>
        <td data-label="where" class="mono">${esc(r.principal)}@${esc(r.target)}</td><td data-label="node" class="mono muted">${esc(r.node || "")}</td><td data-label="what" class="mono">${esc(r.kind)}${r.command ? ": " + esc(r.command) : ""}${hits}</td>
        <td data-label="state">${esc(r.state)}${r.end_reason ? `<div class="muted">${esc(r.end_reason)}</div>` : ""}</td><td data-label="length">${len}</td><td data-label="bytes out" class="mono">${bytes(r.bytes_out)}</td>
        <td><button data-act="play">Play</button> <a class="button" href="${esc(route("asciicast", r.id))}">.cast</a></td></tr>`;
    }).join("");
    $("#recs-empty").classList.toggle("hidden", rows.length > 0);
    $("#recs").classList.toggle("hidden", rows.length === 0);
  } catch (err) { toast(err.message); }
}
$("#search").addEventListener("submit", search);

// Marks what a search matched in a line, the way the server matched it (as typed, ignoring
// case, or a regular expression: JavaScript's reading of it, unmarked when it reads it
// otherwise). The line is escaped piece by piece, never marked up as HTML.
function highlighter(text, ignoreCase, regex) {
  let re = null;
  if (text) {
    const source = regex ? text : text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    try { re = new RegExp(source, ignoreCase ? "gi" : "g"); } catch (err) { re = null; }
  }
  return (line) => {
    if (!re) return esc(line);
    let out = "", last = 0;
    for (const m of line.matchAll(re)) {
      if (!m[0]) break;
      out += esc(line.slice(last, m.index)) + `<mark>${esc(m[0])}</mark>`;
      last = m.index + m[0].length;
    }
    return out + esc(line.slice(last));
  };
}

async function audit(e) {
  e?.preventDefault();
  try {
    const out = await api(`${route("audit")}?${form("#audit-filter")}`);
    const chain = $("#chain");
    if (out.verify.first_bad) {
      chain.className = "badge bad";
      chain.textContent = `chain BROKEN at #${out.verify.first_bad.seq}: ${out.verify.first_bad.reason}`;
    } else {
      chain.className = "badge ok";
      chain.textContent = `chain intact: ${out.verify.records} records`;
    }
    $("#audit tbody").innerHTML = out.records.map((r) => `<tr><td data-label="#" class="id">${r.seq}</td>
      <td data-label="at">${when(r.at)}</td>
      <td data-label="actor"><b>${esc(r.actor)}</b></td><td data-label="action" class="mono">${esc(r.action)}</td>
      <td data-label="subject" class="mono">${subjectLink(r)}</td>
      <td data-label="detail" class="detail mono"><details><summary>${esc(JSON.stringify(r.detail))}</summary><pre>${esc(JSON.stringify(r.detail, null, 2))}</pre></details></td></tr>`).join("");
  } catch (err) { toast(err.message); }
}
$("#audit-filter").addEventListener("submit", audit);

// One time format on the page: UTC ISO, the viewer's local time beside it.
function when(t) {
  const d = new Date(t);
  const utc = d.toISOString().replace(/\.\d+Z$/, "Z");
  return `<span class="mono">${esc(utc)}</span> <span class="muted">${esc(d.toLocaleTimeString())}</span>`;
}

// A record's subject, as a link where the page can show it: a session opens its playback,
// a grant (or a revocation naming one) narrows the log to it.
function subjectLink(r) {
  const subject = String(r.subject);
  if (/^session-/.test(r.action) && /^[0-9a-f]{12}$/.test(subject)) {
    return `<a href="#audit" data-act="play-subject" data-session="${esc(subject)}">${esc(subject)}</a>`;
  }
  const grant = subject.replace(/^grant:/, "");
  if (/^[0-9a-f]{12}$/.test(grant)) {
    return `<a href="#audit" data-act="audit-subject" data-subject="${esc(grant)}">${esc(subject)}</a>`;
  }
  return esc(subject);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-act]");
  if (!a) return;
  e.preventDefault();
  if (a.dataset.act === "play-subject") play(a.dataset.session);
  if (a.dataset.act === "audit-subject") {
    $("#audit-filter input[name=subject]").value = a.dataset.subject;
    $("#audit-filter select[name=since]").value = "315360000";
    audit();
  }
});

$("#logout").addEventListener("click", async () => {
  try { await api(route("logout"), { method: "POST", body: "{}" }); } catch (err) { /* already gone */ }
  showLogin("Logged out.");
});

// --- start ----------------------------------------------------------------------------

// Once every script has run (player.js and review.js come after this one).
document.addEventListener("DOMContentLoaded", () => {
  api(route("state")).then((s) => {
    render(s);
    show();
    connect();
    // The Review tab's badge: what waits for this user.
    if (s.me.may_review && !location.hash.startsWith("#review")) reviews();
  }).catch(() => {});
});
