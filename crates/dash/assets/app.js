// The ferry dashboard: one page, routed by the URL's fragment (#/cluster, #/jobs, #/tasks,
// #/task/ID, #/actors, #/objects, #/logs/JOB), polling the head's JSON API every two seconds.
// Text from the cluster only ever goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 2000;
const STATES = ["waiting_for_args", "waiting_for_worker", "pushed", "running", "blocked", "finished", "failed", "cancelled"];
let timer = null;
let logState = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
}

// A duration in milliseconds, in µs below one.
function dur(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 1 ? Math.round(ms * 1000) + " µs" : ms.toFixed(2) + " ms";
}

function time(ms) {
  if (!ms) return "-";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function micros(us) {
  return us ? time(Math.floor(us / 1000)) + "." + String(Math.floor(us / 1000) % 1000).padStart(3, "0") : "-";
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function setStatus(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status" + (bad ? " bad" : "");
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value", id }, value));
}

// A line chart of one series of the samples, as an SVG polyline.
function chart(title, samples, pick, fmt) {
  const w = 420, h = 90;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  const values = samples.map(pick);
  const max = Math.max(0, ...values);
  if (values.length > 1) {
    const pts = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - 4 - (max ? v / max : 0) * (h - 8)}`).join(" ");
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", pts);
    svg.append(line);
  }
  const last = values.length ? fmt(values[values.length - 1]) : "-";
  return el("figure", { class: "panel" }, el("figcaption", {}, `${title}: ${last} (max ${fmt(max)}, last ${Math.round(samples.length * POLL_MS / 60000)} min)`), svg);
}

function stateBar(byState, total) {
  const bar = el("div", { class: "bar", title: STATES.map(s => `${s}: ${byState[s] || 0}`).join(", ") });
  for (const s of STATES) {
    const n = byState[s] || 0;
    if (!n || !total) continue;
    const seg = el("span", { class: "seg " + s });
    seg.style.width = (100 * n / total) + "%";
    bar.append(seg);
  }
  return bar;
}

function stateCounts(byState) {
  return STATES.filter(s => byState[s]).map(s => `${s} ${byState[s]}`).join(", ") || "none";
}

const pages = {
  async cluster() {
    const c = await api("/api/cluster");
    const alive = c.nodes.filter(n => n.alive);
    const res = (n, name) => n.resources.find(r => r.name === name) || { total: 0, available: 0 };
    const cpuTotal = alive.reduce((a, n) => a + res(n, "CPU").total, 0);
    const cpuUsed = alive.reduce((a, n) => a + res(n, "CPU").total - res(n, "CPU").available, 0);
    const last = c.samples[c.samples.length - 1] || {};
    return [
      el("h1", {}, "Cluster"),
      el("div", { class: "cards" },
        card("Nodes alive", String(alive.length), "node-count"),
        card("CPUs in use", `${cpuUsed} / ${cpuTotal}`, "cpu-use"),
        card("Object store", bytes(alive.reduce((a, n) => a + n.object_bytes, 0)), "store-bytes"),
        card("Workers", String(alive.reduce((a, n) => a + n.workers, 0)), "worker-count"),
        card("Actors", String(alive.reduce((a, n) => a + n.actors, 0)), "actor-count"),
        card("Tasks running / finished / failed", `${last.tasks_running || 0} / ${last.tasks_finished || 0} / ${last.tasks_failed || 0}`, "task-counts")),
      el("div", { class: "charts" },
        chart("CPUs in use", c.samples, s => s.cpu_used, v => v.toFixed(1)),
        chart("Object store", c.samples, s => s.store_bytes, bytes),
        chart("Tasks running", c.samples, s => s.tasks_running, v => String(v))),
      el("h2", {}, "Nodes"),
      table(["Node", "Address", "State", "Resources (used / total)", "Workers", "Actors", "Objects", "In store", "Spilled"],
        c.nodes.map(n => el("tr", { "data-node": n.node, class: n.alive ? "" : "dead" },
          el("td", {}, n.node + (n.head ? " (head)" : "")), el("td", {}, n.addr),
          el("td", { class: "node-state" }, n.alive ? "alive" : "dead"),
          el("td", {}, n.resources.map(r => `${r.name} ${+(r.total - r.available).toFixed(3)} / ${r.total}`).join(", ")),
          el("td", {}, n.workers), el("td", {}, n.actors), el("td", {}, n.objects),
          el("td", {}, bytes(n.object_bytes)), el("td", {}, bytes(n.spilled_bytes)))),
        { id: "nodes" }),
    ];
  },

  async jobs() {
    const j = await api("/api/jobs");
    return [
      el("h1", {}, "Jobs"),
      j.jobs.length === 0 ? el("p", {}, "No jobs yet: `ferry job submit -- PROGRAM` runs one.") :
      table(["Job", "Entrypoint", "Status", "Tasks", "Progress", "Started", "Ended", ""],
        j.jobs.map(x => el("tr", { "data-job": x.id || x.driver },
          el("td", {}, x.id || "-"), el("td", {}, [x.name].concat(x.args).join(" ")),
          el("td", { class: "job-status" }, x.status || "-"),
          el("td", {}, stateBar(x.tasks.by_state, x.tasks.total), el("div", { class: "small" }, stateCounts(x.tasks.by_state))),
          el("td", { class: "progress" }, `${x.tasks.ended} / ${x.tasks.total}`),
          el("td", {}, time(x.started_ms)), el("td", {}, time(x.ended_ms)),
          el("td", {}, el("a", { href: `#/tasks?job=${x.driver}` }, "tasks"), " ",
            x.id ? el("a", { href: `#/logs/${x.id}` }, "log") : null))),
        { id: "jobs" }),
    ];
  },

  async tasks(params) {
    const q = new URLSearchParams(params);
    const limit = 50;
    const offset = Number(q.get("offset") || 0);
    q.set("limit", limit);
    const [t, s] = await Promise.all([api("/api/tasks?" + q), api("/api/summary" + (q.get("job") ? "?job=" + encodeURIComponent(q.get("job")) : ""))]);
    const go = (changes) => {
      const n = new URLSearchParams(params);
      for (const [k, v] of Object.entries(changes)) { if (v === "" || v === null) n.delete(k); else n.set(k, v); }
      location.hash = "#/tasks?" + n;
    };
    const stateSel = el("select", { name: "state", onchange: e => go({ state: e.target.value, offset: null }) },
      el("option", { value: "" }, "any state"), STATES.map(x => el("option", { value: x }, x)));
    stateSel.value = q.get("state") || "";
    const nameIn = el("input", { name: "name", placeholder: "function or name", value: q.get("name") || "" });
    const jobIn = el("input", { name: "job", placeholder: "job (driver id)", value: q.get("job") || "" });
    const h = t.history;
    return [
      el("h1", {}, "Tasks"),
      el("h2", {}, "By function"),
      table(["Job", "Function", "States", "Total", "Mean wait", "Mean run"],
        s.functions.map(r => el("tr", {},
          el("td", {}, r.job), el("td", {}, r.function),
          el("td", {}, stateBar(r.tasks.by_state, r.tasks.total), el("div", { class: "small" }, stateCounts(r.tasks.by_state))),
          el("td", {}, r.tasks.total),
          el("td", {}, dur(r.mean_wait_ms)), el("td", {}, dur(r.mean_run_ms)))),
        { id: "summary" }),
      el("h2", {}, "Each task"),
      el("form", { class: "filters", onsubmit: e => { e.preventDefault(); go({ name: nameIn.value, job: jobIn.value, offset: null }); } },
        stateSel, nameIn, jobIn, el("button", { type: "submit" }, "Filter")),
      table(["Task", "Name", "State", "Attempt", "Node", "Submitted (UTC)", "Ran"],
        t.tasks.map(x => el("tr", { "data-task": x.task, class: x.state },
          el("td", {}, el("a", { href: `#/task/${x.task}` }, x.task)), el("td", { class: "task-name" }, x.name),
          el("td", { class: "task-state" }, x.state), el("td", {}, x.attempt), el("td", {}, x.node || "-"),
          el("td", {}, micros(x.submitted_us)),
          el("td", {}, x.started_us && x.ended_us ? dur((x.ended_us - x.started_us) / 1000) : "-"))),
        { id: "tasks" }),
      el("p", { class: "pager" },
        el("button", { disabled: offset === 0 ? "" : null, onclick: () => go({ offset: Math.max(0, offset - limit) }) }, "newer"),
        ` ${t.matched ? offset + 1 : 0}–${offset + t.tasks.length} of `, el("span", { id: "matched" }, t.matched), " ",
        el("button", { disabled: offset + t.tasks.length >= t.matched ? "" : null, onclick: () => go({ offset: offset + limit }) }, "older")),
      h.dropped_records || h.dropped_events ? el("p", { class: "note" },
        `The head keeps ${h.per_job_limit} records per job: ${h.dropped_records} older records were dropped (their counts stay above), and ${h.dropped_events} events were dropped before they reached it.`) : null,
    ];
  },

  async task(params, id) {
    const [t, log] = await Promise.all([api("/api/tasks/" + encodeURIComponent(id)), api("/api/tasks/" + encodeURIComponent(id) + "/log")]);
    const row = (k, v, attrs) => [el("dt", {}, k), el("dd", attrs || {}, v)];
    return [
      el("h1", {}, "Task " + t.task),
      el("dl", { class: "detail", id: "task-detail" },
        row("Name", t.name, { id: "task-name" }), row("Function", t.function),
        row("State", t.state, { id: "task-state" }), row("Attempt", t.attempt),
        row("Job", el("a", { href: `#/tasks?job=${t.job}` }, t.job)),
        row("Parent", t.parent ? el("a", { href: `#/task/${t.parent}` }, t.parent) : "-"),
        row("Actor", t.actor ? t.actor + (t.creation ? " (its creation)" : "") : "-"),
        row("Node", t.node || "-"), row("Worker", t.worker || "-"),
        row("Submitted", micros(t.submitted_us)), row("Started", micros(t.started_us)), row("Ended", micros(t.ended_us)),
        t.error ? row("Error", el("pre", {}, t.error), { id: "task-error" }) : null),
      el("h2", {}, "What it printed"),
      el("pre", { class: "log", id: "task-log" }, log.lines.length ? log.lines.join("\n") : "(nothing)"),
    ];
  },

  async actors(params) {
    const q = new URLSearchParams(params);
    const limit = 50;
    const offset = Number(q.get("offset") || 0);
    q.set("limit", limit);
    const a = await api("/api/actors?" + q);
    const go = (changes) => {
      const n = new URLSearchParams(params);
      for (const [k, v] of Object.entries(changes)) { if (v === "" || v === null) n.delete(k); else n.set(k, v); }
      location.hash = "#/actors?" + n;
    };
    const stateSel = el("select", { name: "state", onchange: e => go({ state: e.target.value, offset: null }) },
      el("option", { value: "" }, "any state"), el("option", { value: "alive" }, "alive"), el("option", { value: "dead" }, "dead"));
    stateSel.value = q.get("state") || "";
    const classIn = el("input", { name: "class", placeholder: "class or name", value: q.get("class") || "" });
    return [
      el("h1", {}, "Actors"),
      el("div", { class: "cards" },
        card("Alive", String(a.alive), "actors-alive"),
        card("Listed", String(a.total), "actors-listed"),
        card("Dead", String(a.dead), "actors-dead")),
      el("form", { class: "filters", onsubmit: e => { e.preventDefault(); go({ class: classIn.value, offset: null }); } },
        stateSel, classIn, el("button", { type: "submit" }, "Filter")),
      table(["Actor", "Class", "State", "Name", "Node", "Worker", "Restarts", "Why it died"],
        a.actors.map(x => el("tr", { "data-actor": x.actor, class: x.state },
          el("td", {}, x.actor), el("td", { class: "actor-class" }, x.class),
          el("td", { class: "actor-state" }, x.state), el("td", {}, x.name || "-"),
          el("td", {}, x.node || "-"), el("td", {}, x.worker || "-"), el("td", {}, x.restarts),
          el("td", { class: "actor-death" }, x.death || ""))),
        { id: "actors" }),
      el("p", { class: "pager" },
        el("button", { disabled: offset === 0 ? "" : null, onclick: () => go({ offset: Math.max(0, offset - limit) }) }, "previous"),
        ` ${a.matched ? offset + 1 : 0}–${offset + a.actors.length} of `, el("span", { id: "actors-matched" }, a.matched), " ",
        el("button", { disabled: offset + a.actors.length >= a.matched ? "" : null, onclick: () => go({ offset: offset + limit }) }, "next")),
      el("p", { class: "small" }, "Actor calls and creations are in the task table (filter by name)."),
    ];
  },

  async objects() {
    const [m, c] = await Promise.all([api("/api/memory"), api("/api/cluster")]);
    return [
      el("h1", {}, "Objects and memory"),
      table(["Node", "Address", "Objects", "In store", "Spilled"],
        c.nodes.map(n => el("tr", {}, el("td", {}, n.node), el("td", {}, n.addr), el("td", {}, n.objects), el("td", {}, bytes(n.object_bytes)), el("td", {}, bytes(n.spilled_bytes)))),
        { id: "stores" }),
      chart("Object store", c.samples, s => s.store_bytes, bytes),
      el("h2", {}, `Every object (${m.total}), biggest first`),
      table(["Object", "Size", "Where", "Node", "Owner", "Why alive"],
        m.objects.map(o => el("tr", { "data-object": o.object },
          el("td", {}, o.object), el("td", { class: "object-size" }, bytes(o.size)), el("td", {}, o.location),
          el("td", {}, o.node || "-"), el("td", {}, o.owner), el("td", { class: "object-why" }, o.why))),
        { id: "objects" }),
      m.unreachable.length ? el("p", { class: "note" }, `${m.unreachable.length} process(es) did not answer.`) : null,
    ];
  },

  async logs(params, job) {
    const j = await api("/api/jobs");
    const jobs = j.jobs.filter(x => x.id);
    if (!job && jobs.length) job = jobs[0].id;
    if (!logState || logState.job !== job) logState = { job, offset: 0, text: "" };
    if (job) {
      const l = await api(`/api/jobs/${encodeURIComponent(job)}/log?offset=${logState.offset}`);
      logState.text += l.text;
      logState.offset = l.next;
      logState.ended = l.ended;
    }
    return [
      el("h1", {}, "Logs"),
      el("p", {}, "Job: ", jobs.map(x => [el("a", { href: `#/logs/${x.id}`, class: x.id === job ? "current" : "" }, `${x.id} (${x.name})`), " "])),
      job ? el("pre", { class: "log", id: "log" }, logState.text || "(nothing printed yet)") : el("p", {}, "No jobs yet."),
      job && logState.ended ? el("p", { class: "small" }, "The job has ended.") : null,
    ];
  },
};

async function render() {
  const hash = location.hash.replace(/^#\/?/, "") || "cluster";
  const [path, query] = hash.split("?");
  const [name, arg] = path.split("/");
  const page = pages[name] ? name : "cluster";
  for (const a of document.querySelectorAll("nav a[data-page]")) a.classList.toggle("current", a.dataset.page === page);
  try {
    const content = await pages[page](query || "", arg && decodeURIComponent(arg));
    const main = document.getElementById("page");
    const focused = document.activeElement && document.activeElement.name;
    main.replaceChildren(...content.filter(Boolean));
    if (focused) { const f = main.querySelector(`[name="${focused}"]`); if (f) f.focus(); }
    setStatus("updated " + new Date().toISOString().slice(11, 19) + " UTC");
    document.body.dataset.ready = page;
  } catch (e) {
    setStatus(String(e.message || e), true);
  }
}

function schedule() {
  clearTimeout(timer);
  render().finally(() => {
    // A form being typed in is not redrawn under the user.
    timer = setTimeout(function again() {
      const typing = document.activeElement && document.activeElement.tagName === "INPUT";
      if (typing) { timer = setTimeout(again, POLL_MS); return; }
      schedule();
    }, POLL_MS);
  });
}

window.addEventListener("hashchange", schedule);
schedule();
