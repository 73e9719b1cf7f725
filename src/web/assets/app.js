// alohook dashboard: the Live page follows the live stream (/api/stream, signed in by the
// session cookie). Values from Alohub are only ever set as text (textContent), never as HTML.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const lang = live.dataset.lang || "en";
  const T = {
    en: { ringing: "Ringing", in_progress: "In progress", ended: "Ended", live: "Live",
          offline: "Reconnecting…", inbound: "Inbound", outbound: "Outbound",
          answered: "answered", missed: "missed", busy: "busy", failed: "failed" },
    vi: { ringing: "Đang đổ chuông", in_progress: "Đang đàm thoại", ended: "Đã kết thúc",
          live: "Đang cập nhật", offline: "Đang kết nối lại…", inbound: "Gọi vào",
          outbound: "Gọi ra", answered: "đã trả lời", missed: "nhỡ", busy: "máy bận", failed: "lỗi" },
  }[lang];
  const active = document.querySelector("#active tbody");
  const recent = document.querySelector("#recent tbody");
  const empty = document.getElementById("active-empty");
  const status = document.getElementById("live-status");
  const sep = lang === "vi" ? "." : ",";
  const int = (n) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, sep);
  const two = (n) => String(n).padStart(2, "0");
  const duration = (s) => {
    s = Math.max(0, Math.floor(s));
    return s >= 3600 ? `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}`
                     : `${Math.floor(s / 60)}:${two(s % 60)}`;
  };
  const localTime = (t) => {
    if (!t) return "";
    const [date, rest] = t.split("T");
    const clock = (rest || "").slice(0, 8);
    if (lang !== "vi") return `${date} ${clock}`;
    const [y, m, d] = date.split("-");
    return `${d}/${m}/${y} ${clock}`;
  };
  const agent = (c) => (c.user_name && c.user_name.trim()) ? c.user_name : (c.destination_number || "");
  const cell = (text) => { const td = document.createElement("td"); td.textContent = text || ""; return td; };
  const link = (c, text) => {
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "/calls/" + encodeURIComponent(c.call_id);
    a.textContent = text || "";
    td.appendChild(a);
    return td;
  };
  const rowOf = (tbody, id) => Array.from(tbody.rows).find((r) => r.dataset.call === id);

  function showActive(c) {
    let tr = rowOf(active, c.call_id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.className = "new";
      active.insertBefore(tr, active.firstChild);
    }
    tr.dataset.call = c.call_id;
    tr.dataset.phase = c.phase;
    if (c.start_time) tr.dataset.start = c.start_time;
    tr.replaceChildren(link(c, c.caller_number), cell(c.hotline), cell(agent(c)),
      cell(T[c.phase] || c.phase), cell(""));
    tr.cells[3].className = "phase";
    tr.cells[4].className = "for";
  }

  function showEnded(c) {
    const old = rowOf(active, c.call_id);
    if (old) old.remove();
    const again = rowOf(recent, c.call_id);
    if (again) again.remove();
    const tr = document.createElement("tr");
    tr.className = "new";
    tr.dataset.call = c.call_id;
    tr.dataset.phase = "ended";
    tr.replaceChildren(link(c, localTime(c.start_time)), cell(c.caller_number), cell(c.hotline),
      cell(agent(c)), cell(T[c.direction] || c.direction),
      cell(T[(c.call_status || "").toLowerCase()] || c.call_status),
      cell(c.talk_seconds == null ? "" : duration(c.talk_seconds)));
    recent.insertBefore(tr, recent.firstChild);
    while (recent.rows.length > 20) recent.deleteRow(recent.rows.length - 1);
  }

  function tick() {
    const now = Date.now();
    for (const tr of active.rows) {
      const start = Date.parse(tr.dataset.start || "");
      const td = tr.querySelector("td.for");
      if (td) td.textContent = isNaN(start) ? "" : duration((now - start) / 1000);
    }
    empty.hidden = active.rows.length > 0;
  }

  let refreshing = null;
  function refreshCounters() {
    if (refreshing) return;
    refreshing = setTimeout(async () => {
      refreshing = null;
      const day = live.dataset.today;
      try {
        const [stats, open] = await Promise.all([
          fetch(`/api/stats?from=${day}&to=${day}`).then((r) => r.json()),
          fetch("/api/callbacks?state=open&limit=1000").then((r) => r.json()),
        ]);
        const g = (stats.groups && stats.groups[0]) || {};
        const set = (id, text) => { const e = document.querySelector(`#${id} .value`); if (e) e.textContent = text; };
        set("kpi-calls", int(g.calls || 0));
        set("kpi-answered", int(g.answered || 0));
        set("kpi-missed", int(g.unanswered || 0));
        set("kpi-answer-rate", g.answer_rate == null ? "–"
          : (g.answer_rate * 100).toFixed(1).replace(".", lang === "vi" ? "," : ".") + "%");
        set("kpi-open-callbacks", int(open.items.length) + (open.next_cursor ? "+" : ""));
      } catch (e) { /* the next change tries again */ }
    }, 1000);
  }

  const since = encodeURIComponent(live.dataset.since || "0");
  const source = new EventSource(`/api/stream?since=${since}&types=call.created,call.updated,call.ended`);
  source.onopen = () => { status.textContent = T.live; status.classList.remove("offline"); };
  source.onerror = () => {
    status.textContent = T.offline;
    status.classList.add("offline");
    // The browser gives up on an answer that is not a stream (the session ended: 401): the
    // page itself then goes to sign-in, or comes back when the server does.
    if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 3000);
  };
  // Today's counters start again at midnight in the configured zone.
  const midnight = Number(live.dataset.midnight);
  if (midnight > Date.now()) setTimeout(() => location.reload(), midnight - Date.now() + 1000);
  const onChange = (message) => {
    let change;
    try { change = JSON.parse(message.data); } catch (e) { return; }
    const c = change.call;
    if (!c) return;
    if (c.phase === "ended") showEnded(c); else showActive(c);
    tick();
    refreshCounters();
  };
  for (const type of ["call.created", "call.updated", "call.ended"]) source.addEventListener(type, onChange);
  tick();
  setInterval(tick, 1000);
})();
