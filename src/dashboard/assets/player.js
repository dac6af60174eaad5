// ramp-ca dashboard: the terminal player (recordings, Watch, the Review page), with its side
// panel: the session's flags, its command timeline (each entry seeks) and its review.
// Loaded after app.js, whose helpers it uses.
"use strict";

const player = { frames: [], rows: [], cursor: null, at: 0, duration: 0, playing: false, last: 0, applied: 0, live: null, marks: [], mark: -1 };

function openPlayer(title, download) {
  $("#player").classList.remove("hidden");
  $("#player-title").textContent = title;
  const dl = $("#player-download");
  dl.classList.toggle("hidden", !download);
  if (download) dl.href = download;
}

function closePlayer() {
  player.playing = false;
  $("#player-side").classList.add("hidden");
  $("#verdict").classList.add("hidden");
  if (location.hash.startsWith("#review/")) history.replaceState(null, "", "#review");
  $("#player-end").classList.add("hidden");
  $("#player-ending").classList.add("hidden");
  if (player.live) { player.live.close(); player.live = null; }
  $("#player").classList.add("hidden");
}
$("#player-close").addEventListener("click", closePlayer);

// Ending the session being watched: the reason asked for beside the screen.
$("#player-end").addEventListener("click", () => {
  $("#player-ending").classList.remove("hidden");
  $("#player-reason").focus();
});
async function endWatched() {
  const reason = $("#player-reason").value.trim();
  if (!reason) { toast("A reason is required: the user reads it."); return; }
  try {
    await api(route("end", $("#player-end").dataset.session), { method: "POST", body: JSON.stringify({ reason }) });
    $("#player-ending").classList.add("hidden");
    $("#player-end").classList.add("hidden");
    toast("Ended: its user reads why", "good");
  } catch (err) {
    toast(err.message);
  }
}
$("#player-end-confirm").addEventListener("click", endWatched);
$("#player-reason").addEventListener("keydown", (e) => { if (e.key === "Enter") endWatched(); });

function apply(frame) {
  if (frame.size) player.rows = new Array(frame.size[1]).fill("");
  for (const [r, html] of frame.rows) player.rows[r] = html;
  player.cursor = frame.cursor ?? null;
}

// The screen's rows, and the cursor (a block over its cell) where the terminal shows one.
function screenHtml() {
  const c = player.cursor;
  const cursor = c ? `<span class="cursor" style="top: calc(8px + ${c[0] * 1.25}em); left: calc(8px + ${c[1]}ch)"></span>` : "";
  return player.rows.join("\n") + cursor;
}

function paint() {
  $("#screen").innerHTML = screenHtml();
  $("#seek").value = player.at;
  $("#clock").textContent = `${clock(player.at)} / ${clock(player.duration)}`;
  markNow();
}

function seek(t) {
  player.at = Math.max(0, Math.min(t, player.duration));
  player.rows = [];
  player.cursor = null;
  player.applied = 0;
  while (player.applied < player.frames.length && player.frames[player.applied].t <= player.at) apply(player.frames[player.applied++]);
  paint();
}

// Plays recording `id` from `from` ms; `review`: opened from the Review page, with the
// verdict form.
async function play(id, from = 0, review = false) {
  try {
    const out = await api(route("playback", id));
    const m = out.session, p = out.playback;
    openPlayer(shownText(`${m.user} on ${m.principal}@${m.target} · ${m.kind}${m.command ? ": " + m.command : ""} · ${new Date(m.start).toLocaleString()}`),
      route("asciicast", id));
    side(out, review);
    $("#controls").classList.remove("hidden");
    player.frames = p.frames;
    player.duration = p.duration_ms;
    $("#seek").max = p.duration_ms;
    $("#player-note").textContent = `${p.frames.length} screens, ${p.cols}x${p.rows}; changes closer than ${p.step_ms} ms are merged.` +
      (p.truncated ? " The screen changed too much to show in full: playback stops early; download the .cast for all of it." : "");
    seek(from);
    setPlaying(true);
  } catch (err) { toast(err.message); }
}

function setPlaying(on) {
  player.playing = on && player.duration > 0;
  $("#play").textContent = player.playing ? "Pause" : "Play";
  player.last = performance.now();
  if (player.playing) requestAnimationFrame(step);
}

function step(ts) {
  if (!player.playing) return;
  const speed = Number($("#speed").value);
  player.at += (ts - player.last) * speed;
  player.last = ts;
  if (player.at >= player.duration) { player.at = player.duration; setPlaying(false); }
  while (player.applied < player.frames.length && player.frames[player.applied].t <= player.at) apply(player.frames[player.applied++]);
  paint();
  if (player.playing) requestAnimationFrame(step);
}

$("#play").addEventListener("click", () => {
  if (!player.playing && player.at >= player.duration) seek(0);
  setPlaying(!player.playing);
});
$("#seek").addEventListener("input", (e) => seek(Number(e.target.value)));

function follow(id) {
  $("#player-side").classList.add("hidden");
  const m = state.live.find((l) => l.session.id === id)?.session;
  openPlayer(m ? `LIVE · ${m.user} on ${m.principal}@${m.target} · ${m.kind}${m.command ? ": " + m.command : ""}` : `LIVE · ${id}`, null);
  $("#controls").classList.add("hidden");
  $("#player-note").textContent = "Following the live session (what its recording holds, within a second).";
  player.rows = [];
  player.live = new EventSource(route("follow", id));
  player.live.addEventListener("frame", (e) => {
    apply(JSON.parse(e.data));
    $("#screen").innerHTML = screenHtml();
  });
  player.live.addEventListener("end", (e) => {
    const how = JSON.parse(e.data || "{}");
    $("#player-note").textContent = `The session has ${how.state === "interrupted" ? "been interrupted" : "ended"}` +
      (how.reason ? `: ${how.reason}` : ".");
    $("#player-end").classList.add("hidden");
    player.live.close();
  });
  const live = state.live.find((l) => l.session.id === id);
  const end = $("#player-end");
  end.classList.toggle("hidden", !live?.can_end);
  end.dataset.session = id;
}

// --- side panel: flags, command timeline, review ------------------------------------------

// Jumping to a moment shows the screen a little after it: a typed line's echo and the first
// of its output have reached the screen by then.
const LOOK_AFTER_MS = 300;

function side(out, review) {
  const m = out.session;
  $("#player-side").classList.remove("hidden");
  const flags = m.flags || [];
  $("#flags-box").classList.toggle("hidden", flags.length === 0);
  $("#flag-list").innerHTML = flags.map((f) => `<li data-at="${Number(f.at_ms)}">
    <span class="tag glass">${f.blocked ? "blocked" : "flagged"}</span> <b>${txt(f.rule)}</b> <span class="muted">${txt(f.on)} at ${clock(f.at_ms)}</span>
    <button data-jump="${Number(f.at_ms)}">jump to flag</button><div class="mono line">${txt(f.line)}</div></li>`).join("");
  const timeline = out.timeline || [];
  player.marks = timeline.map((e) => Number(e.at_ms));
  player.mark = -1;
  $("#timeline").innerHTML = timeline.map((e, i) => `<li data-i="${i}" data-jump="${Number(e.at_ms)}" class="tl-${txt(e.kind)}" title="show the screen from here">` +
    `<span class="at">${clock(e.at_ms)}</span> <span class="tag">${txt(e.kind)}</span> <span class="mono">${txt(e.line)}</span></li>`).join("");
  $("#timeline-empty").classList.toggle("hidden", timeline.length > 0);
  $("#review-state").innerHTML = reviewState(m);
  const form = $("#verdict");
  form.classList.toggle("hidden", !review || Boolean(m.reviewed));
  form.dataset.session = m.id;
  form.reset();
  $("#verdict-said").textContent = "";
  $("#verdict-said").className = "said";
}

// Where the session stands in review, in words.
function reviewState(m) {
  const r = m.reviewed;
  if (r) return `Reviewed <b>${txt(r.verdict)}</b> by ${txt(r.by)} at ${when(r.at)}: ${txt(r.note)}`;
  if (!m.review) return "";
  const by = m.review.by.map(txt).join(" or ");
  if (!m.end || m.state === "live") return `To be reviewed by ${by} once it has ended.`;
  const due = new Date(new Date(m.end).getTime() + m.review.within_secs * 1000);
  const late = due.getTime() < now() ? ` <span class="tag glass">overdue</span>` : "";
  return `Waiting for a review by ${by}, due ${when(due.toISOString())}${late}`;
}

// Marks the timeline entry the screen is at: the last one at or before it.
function markNow() {
  let i = -1;
  while (i + 1 < player.marks.length && player.marks[i + 1] <= player.at) i++;
  if (i === player.mark) return;
  player.mark = i;
  document.querySelectorAll("#timeline li.now").forEach((li) => li.classList.remove("now"));
  document.querySelector(`#timeline li[data-i="${i}"]`)?.classList.add("now");
}

// A timeline entry or a flag clicked: the screen at that moment, paused there.
$("#player-side").addEventListener("click", (e) => {
  const at = e.target.closest("[data-jump]");
  if (!at) return;
  setPlaying(false);
  seek(Number(at.dataset.jump) + LOOK_AFTER_MS);
});
