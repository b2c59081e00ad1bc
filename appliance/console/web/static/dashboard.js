// The dashboard's only script (no build step, no inline code: the CSP allows only this file).
// Live updates: one EventSource on /api/events; the server sends rendered HTML fragments (escaped
// by its templates) and this file swaps them in, sorts, filters, and posts the operator's actions
// with the session's CSRF token in the X-CSRF-Token header.
(function () {
  "use strict";
  const body = document.body;
  const page = body.dataset.page || "";
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  function fragment(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content;
  }

  function notice(text, bad) {
    const box = $("#notice");
    if (!box) return;
    box.textContent = text;
    box.classList.toggle("bad", !!bad);
    box.hidden = !text;
  }

  async function post(path, data) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(data || {}),
    });
    let answer = {};
    try { answer = await response.json(); } catch (e) { answer = {}; }
    return {status: response.status, body: answer};
  }

  // --- the fleet table: filters and sorting --------------------------------------------------------
  const rowsBody = $("#fleet-rows");
  let sortKey = null, sortNumeric = false, sortDown = false, sortPending = false;

  function keep(row) {
    const kind = ($("#filter-kind") || {}).value || "";
    const problem = ($("#filter-problem") || {}).value || "";
    if (kind && row.dataset.kind !== kind) return false;
    if (!problem) return true;
    const problems = (row.dataset.problems || "").split(" ").filter(Boolean);
    return problem === "any" ? problems.length > 0 : problems.includes(problem);
  }

  function applyFilters() {
    if (!rowsBody) return;
    for (const row of rowsBody.rows) row.hidden = !keep(row);
  }

  function sortRows() {
    sortPending = false;
    if (!rowsBody || !sortKey) return;
    const rows = Array.from(rowsBody.rows);
    rows.sort((a, b) => {
      let x = a.dataset[sortKey] || "", y = b.dataset[sortKey] || "";
      if (sortNumeric) { x = parseFloat(x) || 0; y = parseFloat(y) || 0; }
      const order = x < y ? -1 : x > y ? 1 : (a.dataset.site < b.dataset.site ? -1 : 1);
      return sortDown ? -order : order;
    });
    rowsBody.append(...rows);
  }

  $$("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.sort;
    sortDown = sortKey === key ? !sortDown : false;
    sortKey = key;
    sortNumeric = th.dataset.numeric === "1" || key === "rank";
    $$("th[data-sort]").forEach((other) => other.classList.remove("sorted", "down"));
    th.classList.add("sorted");
    th.classList.toggle("down", sortDown);
    sortRows();
  }));
  ["#filter-kind", "#filter-problem"].forEach((id) => { const el = $(id); if (el) el.addEventListener("change", applyFilters); });
  applyFilters();

  function putRow(site, html) {
    if (!rowsBody) return;
    const row = fragment(html).firstElementChild;
    if (!row) return;
    const old = document.getElementById("row-" + site);
    if (old) old.replaceWith(row); else rowsBody.appendChild(row);
    row.hidden = !keep(row);
    const dot = document.getElementById("map-" + site);
    if (dot) dot.setAttribute("class", "dot " + row.dataset.dot);
    if (sortKey && !sortPending) { sortPending = true; setTimeout(sortRows, 200); }
  }

  // --- live updates -------------------------------------------------------------------------------
  function brokerBanner(ok, text) {
    const banner = $("#broker-banner");
    body.classList.toggle("stale", !ok);
    if (!banner) return;
    if (text) banner.textContent = text;
    banner.hidden = ok;
  }

  function showPanels(panels) {
    const box = $("#meetings");
    if (!box) return;
    const html = Object.values(panels).join("");
    if (html) box.replaceChildren(fragment(html));
    else { const p = document.createElement("p"); p.className = "muted"; p.textContent = box.dataset.empty || ""; box.replaceChildren(p); }
    tickWaits();
  }

  function addEvents(items) {
    const list = $("#events");
    if (!list) return;
    const only = list.dataset.site;
    for (const item of items) {
      if (only && item.site !== only) continue;
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = new Date(item.at * 1000).toLocaleTimeString();
      li.append(time, " " + (only ? "" : item.site + ": ") + item.text);
      list.prepend(li);
      while (list.children.length > 30) list.lastElementChild.remove();
    }
  }

  // The site page's and the rollout page's live parts: the server renders them again (?fragment=1)
  // and the page swaps them in. At most one request a second per page, however many changes arrive
  // (242 sites reporting are not 242 requests), and always one after the last change.
  function refresher(box, url, gapMs) {
    let last = 0, timer = null, busy = false, again = false;
    async function run() {
      timer = null;
      if (busy) { again = true; return; }
      busy = true;
      last = Date.now();
      try {
        const response = await fetch(url, {credentials: "same-origin"});
        // Redirected: the session ended (the login page is no fragment); the next page load says so.
        if (response.ok && !response.redirected) box.replaceChildren(fragment(await response.text()));
      } catch (e) { /* unreachable now: the next change tries again */ }
      busy = false;
      if (again) { again = false; kick(); }
    }
    function kick() {
      if (!timer) timer = setTimeout(run, Math.max(0, last + gapMs - Date.now()));
    }
    return kick;
  }

  const siteLive = $("#site-live");
  const refreshSite = siteLive &&
    refresher(siteLive, "/sites/" + encodeURIComponent(siteLive.dataset.site) + "?fragment=1", 1000);
  const rollout = $("#rollout-body");
  const refreshRollout = rollout && refresher(rollout, "/rollout?fragment=1", 1000);
  // What time alone changes (a site becoming "offline" after 24 h, the days left): every 5 minutes.
  if (refreshRollout) setInterval(refreshRollout, 300 * 1000);

  if (page && page !== "login" && window.EventSource) {
    const source = new EventSource("/api/events?since=" + encodeURIComponent(body.dataset.seq || "0"));
    source.addEventListener("broker", (e) => { const d = JSON.parse(e.data); brokerBanner(d.ok, d.text); });
    source.addEventListener("rows", (e) => {
      const d = JSON.parse(e.data);
      for (const [site, html] of Object.entries(d.rows)) putRow(site, html);
      const counts = $("#counts");
      if (counts && d.counts) counts.textContent = d.counts;
      body.dataset.live = "1";
    });
    source.addEventListener("meetings", (e) => showPanels(JSON.parse(e.data).panels));
    source.addEventListener("events", (e) => addEvents(JSON.parse(e.data).items));
    source.addEventListener("touched", (e) => {
      if (refreshSite && JSON.parse(e.data).sites.includes(siteLive.dataset.site)) refreshSite();
    });
    source.addEventListener("rollout", () => { if (refreshRollout) refreshRollout(); });
    source.addEventListener("open", () => { body.dataset.connected = "1"; });
    source.addEventListener("error", () => { body.dataset.connected = "0"; });
  }

  // --- raised hands: waiting time, ticking --------------------------------------------------------
  function tickWaits() {
    const now = Date.now() / 1000;
    for (const span of $$(".waited[data-since]")) {
      const since = parseFloat(span.dataset.since);
      if (!since) continue;
      const total = Math.max(0, Math.floor(now - since));
      const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
      span.textContent = (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(s).padStart(2, "0");
    }
  }
  setInterval(tickWaits, 1000);

  // --- actions: start, end, grant, revoke ---------------------------------------------------------
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    const action = button.dataset.action, site = button.dataset.site, meeting = button.dataset.meeting;
    button.disabled = true;
    let result;
    if (action === "end") result = await post("/api/meetings/" + encodeURIComponent(meeting) + "/end", {});
    else result = await post("/api/floor/" + action, {site: site, meeting_id: meeting});
    button.disabled = false;
    if (result.status >= 400) notice(result.body.error || ("HTTP " + result.status), true);
    else notice("", false);
  });

  // A preset: the program and ingest URLs of an earlier meeting fill the form's fields.
  const preset = $("#f-preset");
  if (preset) {
    preset.addEventListener("change", () => {
      const chosen = preset.selectedOptions[0];
      $("#f-program").value = chosen.dataset.program;
      $("#f-ingest").value = chosen.dataset.ingest;
    });
  }

  const form = $("#start-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      $$(".field-error", form).forEach((el) => { el.textContent = ""; });
      const data = {};
      for (const [key, value] of new FormData(form).entries()) data[key] = value;
      const button = $("#start-button");
      button.disabled = true;
      const result = await post("/api/meetings", data);
      button.disabled = false;
      if (result.status >= 400) {
        const fields = result.body.fields || {};
        for (const [name, text] of Object.entries(fields)) {
          const slot = form.querySelector('.field-error[data-field="' + name + '"]');
          if (slot) slot.textContent = text;
        }
        notice(Object.keys(fields).length ? "" : (result.body.error || ("HTTP " + result.status)), true);
      } else {
        const s = result.body.summary || {};
        notice(result.body.command.type + " " + result.body.command.id + ": " + s.ok + "/" + s.targeted + " ok", false);
      }
    });
  }
})();
