// ramp-ca dashboard: the Review page. The queue of ended sessions the user may sign off (the
// command line's `sessions review`), each opened in the player with its flags, its command
// timeline and the verdict form; the verdict goes through the same service call as
// `sessions review ID --ok|--concern --note T`, with the page's CSRF token.
// Loaded after app.js and player.js, whose helpers it uses.
"use strict";

// Session ids as the service makes them; anything else in a link is not asked for.
const SESSION_ID = /^[0-9a-f]{12}$/;

async function reviews() {
  try {
    const rows = await api(route("reviews"));
    $("#n-review").textContent = rows.length || "";
    $("#n-queue").textContent = rows.length;
    $("#reviews tbody").innerHTML = rows.map((r) => {
      const rules = [...new Set(r.flags.map((f) => f.rule))];
      const flags = r.flags.length
        ? `<span class="tag glass">${r.flags.length}</span> ${rules.map(txt).join(", ")}`
        : `<span class="muted">none</span>`;
      const due = r.due ? `${when(r.due)}${r.overdue ? ` <span class="tag glass overdue">overdue</span>` : ""}` : "";
      const step = r.contract ? `<span class="tag">${txt(r.contract)}</span> <span class="step">${txt(r.step)}</span>` : "";
      return `<tr data-session="${esc(r.id)}"${r.overdue ? ` class="glass-row"` : ""}>
        <td data-label="due">${due}</td>
        <td data-label="ended">${r.end ? ago(r.end) : ""}<div class="id">${esc(r.id)}</div></td>
        <td data-label="user"><b>${txt(r.user)}</b></td><td data-label="step">${step}</td>
        <td data-label="where" class="mono">${txt(r.principal)}@${txt(r.target)}</td>
        <td data-label="what" class="mono">${txt(r.kind)}${r.command ? ": " + txt(r.command) : ""}</td>
        <td data-label="flags" class="flags">${flags}</td>
        <td class="actions"><button class="ok" data-act="review-open">Review</button></td></tr>`;
    }).join("");
    $("#reviews-empty").classList.toggle("hidden", rows.length > 0);
    $("#reviews").classList.toggle("hidden", rows.length === 0);
  } catch (err) { toast(err.message); }
}

// `#review/ID`: the entry opened in the player with the verdict form (a link to send on).
function openReview(id) {
  if (!SESSION_ID.test(id)) { toast(`No session id in this link: ${shownText(id)}`); return; }
  play(id, 0, true);
}

document.addEventListener("click", (e) => {
  const btn = e.target.closest("button[data-act=review-open]");
  if (btn) location.hash = `#review/${btn.closest("tr").dataset.session}`;
});

function said(text, good) {
  const p = $("#verdict-said");
  p.textContent = text;
  p.className = good ? "said good" : "said bad";
}

$("#verdict").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = $("#verdict");
  const id = form.dataset.session;
  const verdict = form.querySelector("input[name=verdict]:checked")?.value;
  const note = $("#verdict-note").value.trim();
  if (!verdict) { said("Choose ok or concern."); return; }
  if (!note) { said("A note is required: say what you looked at."); return; }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const out = await api(route("review", id), { method: "POST", body: JSON.stringify({ verdict, note }) });
    said(`Signed off: ${verdict}. It is in the audit log.`, true);
    toast(`Reviewed session ${out.id} of ${shownText(out.user)}: ${verdict}`, "good");
    form.classList.add("hidden");
    $("#review-state").innerHTML = reviewState(out);
    reviews();
  } catch (err) {
    // The service's own words: own session, still live, reviewed already, not your role.
    said(`Refused: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});
