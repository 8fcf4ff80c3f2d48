/* rayrt web view: jobs, live job progress, plans with QA, DVHs, machines, cluster and queue.
 *
 * Plain JavaScript, no dependencies, nothing loaded from outside the service. Every number on
 * the page comes from the service's HTTP API (the API table below). Data from the server is put
 * into the page with textContent / setAttribute only, never parsed as HTML: patient names, ids,
 * structure names and messages are untrusted.
 */
"use strict";
(function () {
  const ROOT = (document.body.dataset.root || "").replace(/\/+$/, "");

  // ------------------------------------------------------------------ API
  // Every HTTP route the page calls: [method, path template in the service's route syntax].
  // tests/service/test_web.py checks each entry against the routes of rayrt.service.app.
  const API = {
    health: ["GET", "/health"],
    queue: ["GET", "/queue"],
    cluster: ["GET", "/cluster"],
    patient: ["GET", "/patients/{patient_id}"],
    jobs: ["GET", "/jobs"],
    job: ["GET", "/jobs/{job_id}"],
    jobEvents: ["GET", "/jobs/{job_id}/events"],
    jobCancel: ["POST", "/jobs/{job_id}/cancel"],
    jobBook: ["POST", "/jobs/{job_id}/book"],
    jobResults: ["GET", "/jobs/{job_id}/results"],
    jobResultFile: ["GET", "/jobs/{job_id}/results/{path}"],
    jobPlans: ["GET", "/jobs/{job_id}/plans"],
    jobPlanFile: ["GET", "/jobs/{job_id}/plans/{machine}/{kind}"],
    jobViewer: ["GET", "/jobs/{job_id}/viewer"],
    viewerPlanDose: ["GET", "/jobs/{job_id}/plans/{machine}/dose/{plane}/{index}"],
    patientViewer: ["GET", "/patients/{patient_id}/viewer"],
    viewerSlice: ["GET", "/patients/{patient_id}/slices/{plane}/{index}"],
    viewerMasks: ["GET", "/patients/{patient_id}/masks/{plane}/{index}"],
    viewerUploadDose: ["GET", "/patients/{patient_id}/doses/{n}/{plane}/{index}"],
    viewerPatientView: ["GET", "/patients/{patient_id}/views/{plane}/{index}"],
    viewerJobView: ["GET", "/jobs/{job_id}/views/{plane}/{index}"],
    jobReport: ["GET", "/jobs/{job_id}/report"],
    machines: ["GET", "/machines"],
    machineBookings: ["GET", "/machines/{name}/bookings"],
    machineStatus: ["POST", "/machines/{name}/status"],
    me: ["GET", "/me"],
    upload: ["POST", "/patients"],
    structures: ["POST", "/patients/{patient_id}/structures"],
    createJob: ["POST", "/jobs"],
    jobReviews: ["GET", "/jobs/{job_id}/reviews"],
    jobDvh: ["GET", "/jobs/{job_id}/dvh"],
    planReview: ["POST", "/jobs/{job_id}/plans/{machine}/review"],
    signIn: ["POST", "/session"],
    signOut: ["DELETE", "/session"],
  };

  function apiUrl(name, params) {
    const entry = API[name];
    if (!entry) throw new Error("unknown API route " + name);
    const path = entry[1].replace(/\{(\w+)\}/g, function (_, key) {
      const v = params ? params[key] : undefined;
      if (v === undefined || v === null || v === "") throw new Error("missing " + key + " for " + name);
      // a result path keeps its folders; every other parameter is one path segment
      return key === "path" ? String(v).split("/").map(encodeURIComponent).join("/") : encodeURIComponent(String(v));
    });
    return ROOT + path;
  }

  async function call(name, params, opts) {
    opts = opts || {};
    const init = { method: API[name][0], headers: { Accept: opts.text ? "*/*" : "application/json" }, cache: "no-store" };
    if (opts.form !== undefined) {
      init.body = opts.form;  // multipart: the browser sets the Content-Type with its boundary, and the length
    } else if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const res = await fetch(apiUrl(name, params), init);
    if (res.status === 401 && name !== "signIn") signInView();
    if (!res.ok) {
      let message = res.status + " " + res.statusText;
      let kind = "http";
      let field = null;
      try {
        const body = await res.json();
        if (body && typeof body.message === "string") message = body.message;
        if (body && typeof body.error === "string") kind = body.error;
        if (body && typeof body.field === "string") field = body.field;
      } catch (_) { /* not JSON */ }
      const err = new Error(message);
      err.status = res.status;
      err.kind = kind;
      err.field = field;
      throw err;
    }
    return opts.text ? res.text() : res.json();
  }

  // ------------------------------------------------------------------ DOM helpers (text nodes only, no HTML parsing)
  function append(el, kids) {
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      if (Array.isArray(k)) append(el, k);
      else if (k instanceof Node) el.appendChild(k);
      else el.appendChild(document.createTextNode(String(k)));
    }
    return el;
  }

  // replace an element's children (null / false children are skipped, arrays flattened)
  function fill(el) {
    el.replaceChildren();
    return append(el, Array.prototype.slice.call(arguments, 1));
  }

  function h(tag, props) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.slice(0, 2) === "on" && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "value") el.value = v;
      else if (k === "checked" || k === "disabled" || k === "open" || k === "selected") el[k] = Boolean(v);
      else el.setAttribute(k, String(v));
    }
    return append(el, Array.prototype.slice.call(arguments, 2));
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "text") el.textContent = String(v);
      else el.setAttribute(k, String(v));
    }
    return append(el, Array.prototype.slice.call(arguments, 2));
  }

  // a view of this page (a hash route, never a server path): pageHash("patients", id, "order") -> "#/patients/<id>/order"
  function pageHash() {
    return "#/" + Array.prototype.map.call(arguments, function (x) { return encodeURIComponent(String(x)); }).join("/");
  }

  function jobLink(id) {
    return h("a", { href: "#/jobs/" + encodeURIComponent(id), class: "mono", text: id });
  }

  function badge(text, cls) {
    const t = text === null || text === undefined || text === "" ? "—" : String(text);
    return h("span", { class: "badge " + (cls || "b-" + t.replace(/[^a-z]+/gi, "-").toLowerCase()), text: t });
  }

  function bar(pct, cls) {
    const inner = h("div", { class: "bar-fill " + (cls || "") });
    inner.style.width = Math.max(0, Math.min(100, Number(pct) || 0)).toFixed(1) + "%"; // CSSOM: allowed by the CSP
    return h("div", { class: "bar", title: fmt.num(pct, 1) + " %" }, inner);
  }

  function table(headers, rows, cls) {
    return h("table", { class: cls || "grid" },
      h("thead", null, h("tr", null, headers.map(function (x) { return h("th", null, x); }))),
      h("tbody", null, rows));
  }

  function section(title, ...kids) {
    return h("section", { class: "panel" }, h("h2", { text: title }), kids);
  }

  function muted(text) { return h("p", { class: "muted", text: text }); }

  // ------------------------------------------------------------------ formatting
  const fmt = {
    num: function (v, d) {
      if (v === null || v === undefined || v === "" || !isFinite(Number(v))) return "—";
      return Number(v).toFixed(d === undefined ? 1 : d);
    },
    gy: function (v) { return fmt.num(v, 2) + (v === null || v === undefined || !isFinite(Number(v)) ? "" : " Gy"); },
    date: function (v) {
      if (!v) return "—";
      const d = new Date(v);
      return isNaN(d.getTime()) ? String(v) : d.toLocaleString();
    },
    secs: function (sec) {
      if (sec === null || sec === undefined || !isFinite(sec) || sec < 0) return "—";
      if (sec < 60) return sec.toFixed(sec < 10 ? 1 : 0) + " s";
      const m = Math.floor(sec / 60), r = Math.round(sec % 60);
      if (m < 60) return m + " min " + String(r).padStart(2, "0") + " s";
      return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
    },
    span: function (a, b) {
      if (!a) return "—";
      const t0 = new Date(a).getTime(), t1 = b ? new Date(b).getTime() : Date.now();
      return isNaN(t0) || isNaN(t1) ? "—" : fmt.secs((t1 - t0) / 1000);
    },
    minutes: function (m) {
      if (m === null || m === undefined || !isFinite(Number(m))) return "∞";
      m = Number(m);
      if (m < 60) return m.toFixed(0) + " min";
      return Math.floor(m / 60) + " h " + String(Math.round(m % 60)).padStart(2, "0") + " min";
    },
    bytes: function (n) {
      if (!isFinite(n)) return "—";
      if (n < 1024) return n + " B";
      if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
      return (n / 1048576).toFixed(1) + " MiB";
    },
  };

  // ------------------------------------------------------------------ banner, health
  const banner = document.getElementById("banner");
  function showError(err, where) {
    banner.hidden = false;
    banner.textContent = (where ? where + ": " : "") + (err && err.message ? err.message : String(err));
  }
  function clearError() { banner.hidden = true; banner.textContent = ""; }

  const healthEl = document.getElementById("health");
  async function checkHealth() {
    try {
      const hlt = await call("health");
      healthEl.textContent = hlt.ok ? "● service ok" : "● service degraded";
      healthEl.className = "health " + (hlt.ok ? "ok" : "warn");
      healthEl.title = "GET /health";
    } catch (e) {
      healthEl.textContent = "● service unreachable";
      healthEl.className = "health bad";
      healthEl.title = e.message || String(e);
    }
  }

  // A repeating task that pauses while the tab is hidden and never overlaps itself.
  function poller(fn, ms, where) {
    let timer = null, stopped = false;
    async function tick() {
      if (stopped) return;
      if (!document.hidden) {
        try { await fn(); clearError(); } catch (e) { if (!stopped) showError(e, where); }
      }
      if (!stopped) timer = setTimeout(tick, typeof ms === "function" ? ms() : ms);
    }
    tick();
    return {
      stop: function () { stopped = true; clearTimeout(timer); },
      now: function () { clearTimeout(timer); tick(); },
    };
  }

  function busyTyping(root) {
    const a = document.activeElement;
    return a && root.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }

  // ------------------------------------------------------------------ jobs list
  function jobsView(root) {
    const cards = h("div", { class: "cards" });
    const filter = h("input", { type: "search", class: "filter", placeholder: "filter by job, patient, state, machine…", "aria-label": "filter jobs" });
    const listBox = h("div", null, muted("Loading jobs…"));
    root.append(h("h1", { text: "Jobs" }), cards, h("div", { class: "toolbar" }, filter), listBox);
    let data = null;

    function render() {
      if (!data) return;
      const jobs = (data.jobs.jobs || []).slice().sort(function (a, b) { return String(b.created_at).localeCompare(String(a.created_at)); });
      const queue = data.queue || { queued: [], running: [] };
      const pos = {};
      for (const q of queue.queued || []) pos[q.job_id] = q.position;
      const count = {};
      for (const j of jobs) count[j.state] = (count[j.state] || 0) + 1;
      fill(cards, 
        card("jobs", jobs.length),
        card("queued", (queue.queued || []).length, "b-queued"),
        card("running", (queue.running || []).length, "b-running"),
        card("succeeded", count.succeeded || 0, "b-succeeded"),
        card("failed", count.failed || 0, "b-failed"),
        card("free CPUs", queue.free_cpus === undefined ? "—" : fmt.num(queue.free_cpus, 1)));
      const q = filter.value.trim().toLowerCase();
      const shown = jobs.filter(function (j) {
        if (!q) return true;
        return [j.id, j.patient_id, j.state, j.stage || "", (j.machines || []).join(" ")].join(" ").toLowerCase().indexOf(q) >= 0;
      });
      if (!shown.length) { fill(listBox, muted(jobs.length ? "No job matches the filter." : "No jobs yet: submit one with `rayrt submit DIR --order order.yaml --machines a,b --plan`.")); return; }
      fill(listBox, table(["job", "patient", "state", "stage / progress", "queue", "priority", "machines", "created", "time", "errors"],
        shown.map(function (j) {
          const p = pos[j.id] !== undefined ? pos[j.id] : j.queue_position;
          const queueCell = j.state === "queued" && p !== null && p !== undefined
            ? h("span", { title: "0-based position " + p + " in the compute queue (priority, then age)", text: "#" + (p + 1) + " of " + (queue.queued || []).length })
            : "—";
          return h("tr", null,
            h("td", null, jobLink(j.id)),
            h("td", { class: "mono", text: j.patient_id }),
            h("td", null, badge(j.state)),
            h("td", null, h("div", { class: "stagecell" }, bar(j.progress, "s-" + j.state), h("span", { text: (j.stage || (j.state === "succeeded" ? "done" : "—")) + " · " + fmt.num(j.progress, 0) + " %" }))),
            h("td", null, queueCell),
            h("td", { class: "num", text: j.priority }),
            h("td", { text: (j.machines || []).join(", ") || "—" }),
            h("td", { text: fmt.date(j.created_at) }),
            h("td", { text: j.started_at ? fmt.span(j.started_at, j.finished_at) : "—" }),
            h("td", { class: "err", title: (j.errors || []).join("\n"), text: (j.errors || []).length ? (j.errors || [])[0].slice(0, 80) : "" }));
        })));
    }

    function card(label, value, cls) {
      return h("div", { class: "card " + (cls || "") }, h("div", { class: "card-v", text: value }), h("div", { class: "card-l", text: label }));
    }

    filter.addEventListener("input", render);
    const p = poller(async function () {
      const r = await Promise.all([call("jobs"), call("queue").catch(function () { return null; })]);
      data = { jobs: r[0], queue: r[1] };
      render();
    }, 3000, "jobs");
    return { stop: p.stop };
  }

  // ------------------------------------------------------------------ one job
  function jobView(root, jobId) {
    const head = h("div", { class: "jobhead" }, muted("Loading job…"));
    const live = h("span", { class: "live" });
    const actions = h("div", { class: "actions" });
    const stagesBox = h("div");
    const patientBox = h("div");
    const resultsBox = h("div");
    const msg = h("div", { class: "msg", role: "status" });
    root.append(
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs", text: "← jobs" })),
      h("h1", null, "Job ", h("span", { class: "mono", text: jobId }), " ", live),
      head, actions, msg,
      section("Stages", stagesBox),
      section("Patient", patientBox),
      resultsBox);

    let job = null, es = null, pollTimer = null, stopped = false, resultsKey = null, patientLoaded = false;

    function setLive(text, cls) { live.textContent = text; live.className = "live " + (cls || ""); }

    function update(j) {
      job = j;
      renderHead();
      renderStages();
      if (!patientLoaded) { patientLoaded = true; loadPatient(j.patient_id); }
      const exp = (j.stages || []).find(function (st) { return st.name === "export"; });
      const key = exp && exp.state === "succeeded" ? "export:" + exp.finished_at : (j.state === "succeeded" || j.state === "failed" || j.state === "cancelled" ? "end:" + j.finished_at : null);
      if (key && key !== resultsKey) {
        resultsKey = key;
        loadResults().catch(function (e) { fill(resultsBox, section("Results", muted("Results could not be shown: " + (e.message || e)))); });
      }
    }

    function renderHead() {
      const j = job;
      const kv = [
        ["state", badge(j.state)],
        ["progress", h("div", { class: "stagecell" }, bar(j.progress, "s-" + j.state), h("span", { text: fmt.num(j.progress, 0) + " %" + (j.stage ? " · " + j.stage : "") }))],
        ["patient", h("span", { class: "mono", text: j.patient_id })],
        ["machines", (j.machines || []).join(", ") || "—"],
        ["priority", String(j.priority)],
        ["queue position", j.state === "queued" && j.queue_position !== null && j.queue_position !== undefined ? "#" + (j.queue_position + 1) + " (0-based " + j.queue_position + ")" : "—"],
        ["computer", j.worker || "—"],
        ["created", fmt.date(j.created_at)],
        ["started", fmt.date(j.started_at)],
        ["finished", fmt.date(j.finished_at)],
        ["run time", j.started_at ? fmt.span(j.started_at, j.finished_at) : "—"],
        ["planning", j.planning ? "plan: " + (j.planning.gantry_deg ? j.planning.gantry_deg.length : j.planning.num_beams) + " beams, "
          + j.planning.dose_grid_mm + " mm dose grid, " + j.planning.max_segments + " segments/beam" : "analysis only"],
      ];
      const order = j.order || {};
      if (order.prescription) {
        const rx = order.prescription;
        kv.push(["prescription", fmt.num(rx.total_dose_gy, 1) + " Gy in " + rx.fractions + " fractions to " + rx.target]);
      }
      fill(head, h("dl", { class: "kv" }, kv.map(function (p) { return [h("dt", { text: p[0] }), h("dd", null, p[1])]; })),
        (j.errors || []).length ? h("div", { class: "errors" }, h("strong", { text: "Errors" }), h("ul", null, j.errors.map(function (e) { return h("li", { text: e }); }))) : null);
      fill(actions);
      if (j.state === "queued" || j.state === "running") {
        actions.append(h("button", { type: "button", class: "danger", text: "Cancel job", onclick: cancelJob }));
      }
      actions.append(h("button", { type: "button", text: "Refresh", onclick: function () { refreshOnce(true); } }));
      actions.append(h("a", { class: "button", href: viewerHash("jobs", jobId), text: "Open viewer" }));
    }

    function renderStages() {
      const st = job.stages || [];
      if (!st.length) { fill(stagesBox, muted("No stage has started yet.")); return; }
      fill(stagesBox, table(["stage", "state", "progress", "tasks", "started", "time", "message"], st.map(function (x) {
        return h("tr", null,
          h("td", { class: "mono", text: x.name }),
          h("td", null, badge(x.state)),
          h("td", null, h("div", { class: "stagecell" }, bar(x.percent, "s-" + x.state), h("span", { text: fmt.num(x.percent, 0) + " %" }))),
          h("td", { class: "num", text: x.tasks_total ? x.tasks_done + " / " + x.tasks_total : "" }),
          h("td", { text: x.started_at ? new Date(x.started_at).toLocaleTimeString() : "—" }),
          h("td", { text: x.started_at ? fmt.span(x.started_at, x.finished_at) : "—" }),
          h("td", { class: "wrap", text: x.message || "" }));
      })));
    }

    async function loadPatient(pid) {
      try {
        const p = await call("patient", { patient_id: pid });
        const series = (p.series || []).map(function (sr) {
          return h("li", { text: sr.modality + " · " + (sr.shape || []).join(" × ") + " voxels · " + (sr.spacing_mm || []).map(function (v) { return fmt.num(v, 2); }).join(" × ") + " mm" + (sr.description ? " · " + sr.description : "") });
        });
        fill(patientBox, 
          h("dl", { class: "kv" },
            h("dt", { text: "name" }), h("dd", { text: p.patient_name || "—" }),
            h("dt", { text: "DICOM PatientID" }), h("dd", { class: "mono", text: p.patient_id || "—" }),
            h("dt", { text: "rayrt id" }), h("dd", { class: "mono", text: p.id }),
            h("dt", { text: "series" }), h("dd", null, series.length ? h("ul", { class: "plain" }, series) : "—")),
          (p.structures || []).length ? table(["", "structure", "kind", "volume", "source"], p.structures.map(function (st) {
            return h("tr", null, h("td", null, swatch(structureColour(st))), h("td", { text: st.name }), h("td", { text: st.kind }),
              h("td", { class: "num", text: st.volume_cc === null || st.volume_cc === undefined ? "—" : fmt.num(st.volume_cc, 1) + " cm³" }), h("td", { text: st.source || "" }));
          }), "grid compact") : null,
          (p.warnings || []).length ? h("ul", { class: "warnings" }, p.warnings.map(function (w) { return h("li", { text: w }); })) : null);
        structureColours = {};
        for (const st of p.structures || []) structureColours[st.name] = structureColour(st);
      } catch (e) {
        fill(patientBox, muted("Patient " + pid + ": " + e.message));
      }
    }

    // live progress: server-sent events, polling when they are not available
    function startLive() {
      closeEvents();
      if (stopped) return;
      if (typeof window.EventSource !== "function") { startPolling("polling (no EventSource in this browser)"); return; }
      let got = false;
      es = new window.EventSource(apiUrl("jobEvents", { job_id: jobId }));
      setLive("● live", "on");
      es.addEventListener("job", function (ev) {
        got = true;
        try { update(JSON.parse(ev.data)); clearError(); } catch (e) { showError(e, "job event"); }
      });
      es.addEventListener("end", function () {
        closeEvents();
        setLive("finished", "off");
        startPolling(null); // slow poll: a machine going down can re-plan a finished job
      });
      es.addEventListener("error", function (ev) {
        if (stopped) return;
        if (ev && typeof ev.data === "string") { setLive("● live (store hiccup)", "warn"); return; } // the server's own 'error' event
        closeEvents();
        startPolling(got ? "polling (event stream dropped)" : "polling (event stream unavailable)");
      });
    }

    function closeEvents() { if (es) { es.close(); es = null; } }

    function startPolling(label) {
      clearTimeout(pollTimer);
      if (label) setLive(label, "warn");
      async function tick() {
        if (stopped) return;
        let wasFinished = job && isFinished(job);
        try {
          if (!document.hidden) {
            update(await call("job", { job_id: jobId }));
            clearError();
          }
        } catch (e) { showError(e, "job " + jobId); }
        if (stopped) return;
        if (wasFinished && job && !isFinished(job)) { startLive(); return; } // re-queued (re-plan): live again
        if (job && isFinished(job)) setLive("finished", "off");
        pollTimer = setTimeout(tick, job && isFinished(job) ? 10000 : 2000);
      }
      pollTimer = setTimeout(tick, label ? 0 : 10000);
    }

    function isFinished(j) { return j.state === "succeeded" || j.state === "failed" || j.state === "cancelled"; }

    async function refreshOnce(withResults) {
      try {
        const j = await call("job", { job_id: jobId });
        if (withResults) resultsKey = null;
        update(j);
        clearError();
      } catch (e) { showError(e, "job " + jobId); }
    }

    async function cancelJob() {
      if (!window.confirm("Cancel job " + jobId + "?")) return;
      try {
        const r = await call("jobCancel", { job_id: jobId }, { body: {} });
        fill(msg, h("p", { class: "ok", text: "Job " + r.job_id + ": " + r.state + "." }));
        refreshOnce(false);
      } catch (e) { fill(msg, h("p", { class: "err", text: "Cancel refused: " + e.message })); }
    }

    // results: plans, QA, goals, DVH, figures, downloads
    let structureColours = {};
    let reviews = [];
    async function loadResults() {
      fill(resultsBox, section("Results", muted("Loading results…")));
      const r = await Promise.all([
        call("jobPlans", { job_id: jobId }).catch(function (e) { return e; }),
        call("jobResults", { job_id: jobId }).catch(function (e) { return e; }),
      ]);
      const plans = r[0], results = r[1];
      const files = results instanceof Error ? [] : results.files || [];
      const out = [];
      if (plans instanceof Error) {
        out.push(section("Plans", muted(plans.status === 409 ? "No plans: " + plans.message : "Plans could not be loaded: " + plans.message)));
      } else {
        const machines = plans.machines || [];
        const qa = await Promise.all(machines.map(function (m) {
          return m.downloads && m.downloads.qa ? call("jobPlanFile", { job_id: jobId, machine: m.machine, kind: "qa" }).catch(function () { return null; }) : Promise.resolve(null);
        }));
        const qaBy = {};
        machines.forEach(function (m, i) { qaBy[m.machine] = qa[i]; });
        try { reviews = (await call("jobReviews", { job_id: jobId })).reviews || []; } catch (_) { reviews = []; }
        const dvhFile = files.find(function (f) { return f.stage === "export" && /(^|\/)dvh\.csv$/.test(f.path); });
        let dvhRows = [];
        if (dvhFile) {
          try { dvhRows = parseCsv(await call("jobResultFile", { job_id: jobId, path: dvhFile.path }, { text: true })); } catch (e) { showError(e, "DVH"); }
        }
        out.push(section("Report", h("div", { class: "links" }, h("a", { class: "dl", href: apiUrl("jobReport", { job_id: jobId }), download: "", text: "Report (PDF)" }),
          h("span", { class: "muted small", text: " the review for the patient record: plans, goals, DVHs, dose slices through the target, QA, reviews" }))));
        out.push(section("Plans per machine", plansCards(machines, qaBy)));
        out.push(section("Prescription goals", goalsTable(machines)));
        let full = null;
        try { full = await call("jobDvh", { job_id: jobId }); } catch (_) { full = null; } // the exported points then
        out.push(section("DVH: standard vs converted plans", dvhPanel(machines, dvhRows, qaBy, full)));
        out.push(section("QA checks", qaDetails(machines, qaBy)));
      }
      const pngs = files.filter(function (f) { return f.stage === "qa" && /\.png$/i.test(f.path); });
      out.push(section("QA report pages", pngs.length ? h("div", { class: "figs" }, pngs.map(function (f) {
        const src = apiUrl("jobResultFile", { job_id: jobId, path: f.path });
        return h("figure", null, h("a", { href: src, target: "_blank", rel: "noopener" }, h("img", { src: src, alt: "QA report " + f.path, loading: "lazy" })), h("figcaption", { text: f.path }));
      })) : muted("No QA figures: submit the job with options {\"qa_figures\": true} to render them.")));
      out.push(section("All result files", files.length ? h("details", null, h("summary", { text: files.length + " files" }),
        table(["stage", "file", "size"], files.map(function (f) {
          return h("tr", null, h("td", { text: f.stage }), h("td", null, h("a", { href: apiUrl("jobResultFile", { job_id: jobId, path: f.path }), download: "", text: f.path })), h("td", { class: "num", text: fmt.bytes(f.size_bytes) }));
        }), "grid compact")) : muted(results instanceof Error ? results.message : "No result files yet.")));
      fill(resultsBox, out);
    }

    const KIND_LABEL = { rtplan: "RTPLAN", rtdose: "RTDOSE", rtstruct: "RTSTRUCT", qa: "QA report (JSON)", dvh: "DVH (CSV)", plan: "plan (JSON)" };

    function plansCards(machines, qaBy) {
      if (!machines.length) return muted("The export stage wrote no plans.");
      const fractions = job && job.order && job.order.prescription ? job.order.prescription.fractions : null;
      return h("div", { class: "plans" }, machines.map(function (m, i) {
        const released = m.verdict !== "not released";
        const rep = qaBy[m.machine];
        const gamma = rep && rep.gamma ? rep.gamma.pass_rate_pct : null;
        const links = Object.keys(m.downloads || {}).map(function (k) {
          return h("a", { class: "dl", href: apiUrl("jobPlanFile", { job_id: jobId, machine: m.machine, kind: k }), download: "", text: KIND_LABEL[k] || k });
        });
        const bookBox = h("div", { class: "book" });
        if (released && job && (job.machines || []).indexOf(m.machine) >= 0) {
          const fr = h("input", { type: "number", min: "1", step: "1", value: fractions || 1, class: "short", "aria-label": "fractions" });
          bookBox.append(h("label", null, "fractions ", fr), h("button", {
            type: "button", text: "Book on " + m.machine, onclick: async function () {
              try {
                const b = await call("jobBook", { job_id: jobId }, { body: { machine: m.machine, fractions: parseInt(fr.value, 10) || undefined } });
                bookBox.append(h("p", { class: "ok", text: "Booked " + b.fractions + " fraction(s) on " + b.machine + " (" + b.state + ")." }));
              } catch (e) { bookBox.append(h("p", { class: "err", text: "Booking refused: " + e.message })); }
            },
          }));
        }
        return h("article", { class: "plan " + (released ? "released" : "withheld") },
          h("header", null, h("h3", { text: m.machine }), i === 0 ? h("span", { class: "tag", text: "standard plan" }) : null),
          h("div", { class: "verdicts" }, badge(m.verdict || "no QA"), h("span", { class: released ? "rel ok" : "rel bad", text: released ? "released" : "not released" })),
          h("dl", { class: "kv small" },
            h("dt", { text: "plan" }), h("dd", { class: "mono", text: m.plan_id || "—" }),
            h("dt", { text: "MU / fraction" }), h("dd", { text: fmt.num(m.total_mu_per_fraction, 1) }),
            h("dt", { text: "segments" }), h("dd", { text: String(m.segments) }),
            h("dt", { text: "gamma vs standard" }), h("dd", { text: gamma === null ? (i === 0 ? "reference" : "—") : fmt.num(gamma, 1) + " % (3 %/2 mm)" })),
          (m.failed_checks || []).length ? h("div", { class: "reasons" }, h("strong", { text: released ? "To review" : "Why not released" }),
            h("ul", null, m.failed_checks.map(function (c) { return h("li", { text: c }); }))) : h("p", { class: "ok", text: "All QA checks passed." }),
          links.length ? h("div", { class: "links" }, links) : null,
          reviewBox(m, released),
          bookBox);
      }));
    }

    // a physicist's decision on a released plan: the latest one shown, every one kept (GET /jobs/{id}/reviews)
    function reviewBox(m, released) {
      const mine = reviews.filter(function (r) { return r.machine === m.machine && r.plan_id === m.plan_id; });
      const last = mine.length ? mine[mine.length - 1] : null;
      const box = h("div", { class: "review", dataset: { machine: m.machine } });
      const status = last
        ? h("p", { class: "decision " + (last.decision === "approved" ? "ok" : "err") }, (last.decision === "approved" ? "✓ approved" : "✗ rejected") + " by " + last.by + ", " + fmt.date(last.at) + (last.comment ? ": " + last.comment : ""))
        : h("p", { class: "decision muted", text: released ? "Not reviewed yet." : "Not released: nothing to review." });
      box.append(h("strong", { text: "Physicist's review" }), status);
      if (mine.length > 1) box.append(h("details", null, h("summary", { text: mine.length + " decisions" }), h("ul", { class: "plain" }, mine.map(function (r) {
        return h("li", { text: fmt.date(r.at) + " " + r.decision + " by " + r.by + (r.comment ? ": " + r.comment : "") });
      }))));
      if (!released) return box;
      const comment = h("input", { type: "text", class: "reason", placeholder: "comment (required to reject)", "aria-label": "review comment for " + m.machine });
      const out = h("span", { role: "status" });
      async function decide(decision) {
        try {
          const r = await call("planReview", { job_id: jobId, machine: m.machine }, { body: { decision: decision, comment: comment.value } });
          reviews = r.reviews || [];
          box.replaceWith(reviewBox(m, released));
        } catch (e) { fill(out, h("span", { class: "err", text: "Review refused: " + e.message })); }
      }
      box.append(h("div", { class: "inline" }, comment,
        h("button", { type: "button", class: "approve", text: "Approve", onclick: function () { decide("approved"); } }),
        h("button", { type: "button", class: "danger reject", text: "Reject", onclick: function () { decide("rejected"); } })), out);
      return box;
    }

    // the order's goals, per plan met / missed with the achieved value in the goal's unit; under the
    // table, what limited each missed goal of the automatic planning (the export's limited_by)
    function goalsTable(machines) {
      const keys = [], seen = {};
      for (const m of machines) for (const g of m.goals || []) {
        const k = g.structure + "\u0000" + g.goal;
        if (!seen[k]) { seen[k] = { structure: g.structure, goal: g.goal, rank: g.rank }; keys.push(k); }
      }
      if (!keys.length) return muted("The order has no DVH goals that could be evaluated.");
      function shown(g) {
        const v = g.value !== null && g.value !== undefined ? g.value : g.value_gy;
        return v === null || v === undefined || !isFinite(Number(v)) ? "—" : fmt.num(v, 2) + " " + (g.unit || "Gy");
      }
      const why = [];
      const t = table(["rank", "structure", "goal"].concat(machines.map(function (m) { return m.machine; })), keys.map(function (k) {
        return h("tr", null, h("td", { class: "num", text: seen[k].rank === null || seen[k].rank === undefined ? "—" : String(seen[k].rank) }),
          h("td", { text: seen[k].structure }), h("td", { text: seen[k].goal }), machines.map(function (m) {
            const g = (m.goals || []).find(function (x) { return x.structure + "\u0000" + x.goal === k; });
            if (!g) return h("td", { class: "muted", text: "—" });
            if (!g.met && g.limited_by) why.push(m.machine + " · " + g.structure + " " + g.goal + ": " + g.limited_by);
            const exact = g.value === null || g.value === undefined ? "no value" : Number(g.value).toPrecision(8) + " " + (g.unit || "Gy");
            return h("td", { class: g.met ? "met" : "notmet", title: (g.met ? "goal met: " : "goal not met: ") + exact + " (goal " + g.limit_gy + " " + (g.unit || "Gy") + ")" }, (g.met ? "✓ " : "✗ ") + shown(g));
          }));
      }));
      return [t, why.length ? h("div", { class: "limits" }, h("strong", { text: "What limited the missed goals" }), h("ul", null, why.map(function (x) { return h("li", { text: x }); }))) : null];
    }

    function qaDetails(machines, qaBy) {
      const items = machines.filter(function (m) { return qaBy[m.machine]; });
      if (!items.length) return muted("No QA reports.");
      return items.map(function (m) {
        const rep = qaBy[m.machine];
        const bad = (rep.checks || []).filter(function (c) { return c.status !== "pass"; }).length;
        return h("details", { class: "qa" },
          h("summary", null, h("strong", { text: m.machine }), " ", badge(rep.verdict), " " + (rep.checks || []).length + " checks, " + bad + " not passed" + (rep.attempts > 1 ? ", " + rep.attempts + " conversion attempts" : "")),
          table(["check", "category", "status", "value", "limit", "detail"], (rep.checks || []).map(function (c) {
            return h("tr", null, h("td", { text: c.name }), h("td", { text: c.category }), h("td", null, badge(c.status)),
              h("td", { class: "num", text: fmt.num(c.value, 2) + (c.unit ? " " + c.unit : "") }),
              h("td", { class: "num", text: fmt.num(c.limit, 2) + (c.unit ? " " + c.unit : "") }), h("td", { class: "wrap", text: c.detail }));
          }), "grid compact"),
          (rep.notes || []).length ? h("ul", { class: "notes" }, rep.notes.map(function (n) { return h("li", { text: n }); })) : null);
      });
    }

    function dvhPanel(machines, rows, qaBy, full) {
      // full cumulative DVHs of every plan with a dose (GET /jobs/{id}/dvh) with the exported metrics
      // (dvh.csv) in the table; without them the curves join the exported points. Plans that were
      // not released have no dose and no CSV rows: their DVH points come from their QA report
      const curves = [];
      const inCsv = {};
      const metric = {};
      for (const r of rows) metric[r.machine + "\u0000" + r.structure] = r;
      if (full && (full.plans || []).length) {
        for (const p of full.plans) {
          inCsv[p.machine] = true;
          for (const st of p.structures || []) {
            const m = metric[p.machine + "\u0000" + st.name] || { volume_cc: st.volume_cc };
            curves.push({ machine: p.machine, structure: st.name, m: m, axis: full.dose_gy, full: st.volume_pct });
          }
        }
      } else {
        for (const r of rows) { inCsv[r.machine] = true; curves.push({ machine: r.machine, structure: r.structure, m: r }); }
      }
      for (const m of machines) {
        const rep = qaBy[m.machine];
        if (!inCsv[m.machine] && rep && (rep.dvh_plan || []).length) {
          for (const d of rep.dvh_plan) curves.push({ machine: m.machine, structure: d.name, m: d, withheld: true });
        }
      }
      if (!curves.length) return muted("No DVH data (dvh.csv) in the results.");
      const order = machines.map(function (m) { return m.machine; });
      const machineList = uniq(curves.map(function (c) { return c.machine; })).sort(function (a, b) { return rank(a) - rank(b); });
      function rank(x) { const i = order.indexOf(x); return i < 0 ? 999 : i; }
      const structures = uniq(curves.map(function (c) { return c.structure; }));
      const goals = machines.length ? (machines[0].goals || []) : [];
      const shownS = {}, shownM = {};
      structures.forEach(function (x) { shownS[x] = !/^(body|external|skin)$/i.test(x) || structures.length === 1; });
      machineList.forEach(function (x) { shownM[x] = true; });
      const chartBox = h("div", { class: "chart" });
      const tableBox = h("div");
      const colour = {}, dash = {};
      structures.forEach(function (x, i) { colour[x] = structureColours[x] || PALETTE[i % PALETTE.length]; });
      machineList.forEach(function (x, i) { dash[x] = DASHES[i % DASHES.length]; });

      function draw() {
        const vis = curves.filter(function (c) { return shownS[c.structure] && shownM[c.machine]; });
        fill(chartBox, dvhChart(vis, colour, dash, goals.filter(function (g) { return shownS[g.structure]; })));
        fill(tableBox, dvhTable(vis, machineList));
      }
      const sControls = structures.map(function (x) {
        return h("label", { class: "chk" }, h("input", { type: "checkbox", checked: shownS[x], onchange: function (ev) { shownS[x] = ev.target.checked; draw(); } }), swatch(colour[x]), " " + x);
      });
      const mControls = machineList.map(function (x) {
        const sample = s("svg", { width: 34, height: 10, "aria-hidden": "true" }, s("line", { x1: 1, y1: 5, x2: 33, y2: 5, stroke: "#333", "stroke-width": 2, "stroke-dasharray": dash[x] || null }));
        const withheld = curves.some(function (c) { return c.machine === x && c.withheld; });
        return h("label", { class: "chk" }, h("input", { type: "checkbox", checked: true, onchange: function (ev) { shownM[x] = ev.target.checked; draw(); } }), sample, " " + x + (withheld ? " (not released)" : ""));
      });
      draw();
      return [
        h("div", { class: "legend" }, h("span", { class: "legend-h", text: "structures" }), sControls),
        h("div", { class: "legend" }, h("span", { class: "legend-h", text: "plans" }), mControls),
        chartBox,
        h("p", { class: "muted small", text: full && (full.plans || []).length
          ? "Cumulative DVHs on each plan's dose grid (" + (full.method || "voxel centres") + "); the report's DVHs. ▲ / ▼: the order's minimum / maximum DVH goals."
          : "Cumulative DVH through the exported points (min, D98, D95, D50, D10, D5, D2, max; straight lines between them). ▲ / ▼: the order's minimum / maximum DVH goals. Full-resolution DVHs: the RTDOSE + RTSTRUCT downloads or `rayrt dvh`." }),
        tableBox,
      ];
    }

    startLive();
    return {
      stop: function () { stopped = true; closeEvents(); clearTimeout(pollTimer); },
    };
  }

  // ------------------------------------------------------------------ DVH drawing (SVG)
  const PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  const DASHES = [null, "7 4", "2 3", "10 3 2 3", "4 4", "1 2", "12 4"];
  const DVH_POINTS = [["min_gy", 100], ["d98_gy", 98], ["d95_gy", 95], ["d50_gy", 50], ["d10_gy", 10], ["d5_gy", 5], ["d2_gy", 2], ["max_gy", 0]];

  function uniq(xs) { return xs.filter(function (x, i) { return xs.indexOf(x) === i; }); }

  function structureColour(st) {
    const c = st && st.colour;
    if (Array.isArray(c) && c.length === 3 && c.every(function (v) { return Number.isInteger(v) && v >= 0 && v <= 255; })) {
      if (c[0] > 235 && c[1] > 235 && c[2] > 235) return "#888888"; // white on white: unreadable
      return "#" + c.map(function (v) { return v.toString(16).padStart(2, "0"); }).join("");
    }
    return null;
  }

  function swatch(colour) {
    const el = h("span", { class: "swatch" });
    if (colour) el.style.background = colour;
    return el;
  }

  function dvhPoints(m) {
    const pts = [];
    for (const p of DVH_POINTS) {
      const v = Number(m[p[0]]);
      if (m[p[0]] !== undefined && m[p[0]] !== null && m[p[0]] !== "" && isFinite(v)) pts.push([v, p[1], p[0]]);
    }
    for (let i = 1; i < pts.length; i++) if (pts[i][0] < pts[i - 1][0]) pts[i][0] = pts[i - 1][0]; // cumulative: dose rises as volume falls
    return pts;
  }

  // a curve's [dose (Gy), volume (%)] points: the full DVH when there is one, else the exported points
  function curvePoints(c) {
    if (c.full) return c.axis.map(function (d, i) { return [d, c.full[i]]; });
    return dvhPoints(c.m);
  }

  function niceStep(range, ticks) {
    const raw = range / Math.max(1, ticks), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
  }

  function dvhChart(curves, colour, dash, goals) {
    const W = 760, H = 400, L = 58, R = 18, T = 14, B = 46;
    let xmax = 0;
    for (const c of curves) for (const p of curvePoints(c)) if (p[1] > 0 || !c.full) xmax = Math.max(xmax, p[0]);
    for (const g of goals) if (isFinite(g.limit_gy)) xmax = Math.max(xmax, g.limit_gy);
    if (!(xmax > 0)) xmax = 1;
    const step = niceStep(xmax * 1.05, 8);
    xmax = Math.ceil(xmax * 1.05 / step) * step;
    const X = function (d) { return L + (d / xmax) * (W - L - R); };
    const Y = function (v) { return T + (1 - v / 100) * (H - T - B); };
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, class: "dvh", role: "img", "aria-label": "cumulative dose-volume histograms" });
    const grid = s("g", { class: "axis" });
    for (let d = 0; d <= xmax + 1e-9; d += step) {
      grid.append(s("line", { x1: X(d), x2: X(d), y1: T, y2: H - B, class: "gl" }), s("text", { x: X(d), y: H - B + 16, "text-anchor": "middle", text: fmt.num(d, step < 1 ? 1 : 0) }));
    }
    for (let v = 0; v <= 100; v += 10) {
      grid.append(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "gl" }), s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", text: String(v) }));
    }
    grid.append(s("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }),
      s("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", class: "al", text: "dose (Gy)" }),
      s("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", class: "al", text: "volume (%)" }));
    svg.append(grid);
    for (const c of curves) {
      const pts = curvePoints(c).filter(function (p) { return p[0] <= xmax + 1e-9; });
      if (!pts.length) continue;
      const g = s("g", { class: "curve" }, s("title", { text: c.structure + " · " + c.machine + (c.withheld ? " (not released)" : "") }));
      g.append(s("polyline", { points: pts.map(function (p) { return X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); }).join(" "), fill: "none", stroke: colour[c.structure], "stroke-width": 2, "stroke-dasharray": dash[c.machine] || null }));
      if (!c.full) for (const p of pts) {
        g.append(s("circle", { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.6, fill: colour[c.structure] },
          s("title", { text: c.structure + " · " + c.machine + ": " + p[2].replace("_gy", "").toUpperCase() + " = " + fmt.num(p[0], 2) + " Gy" })));
      }
      svg.append(g);
    }
    for (const gl of goals) {
      const m = /^D(\d+(?:\.\d+)?)$/.exec(gl.metric || "");
      if (!m || !isFinite(gl.limit_gy)) continue;
      const v = Number(m[1]), x = X(gl.limit_gy), y = Y(v), up = /≥|>=/.test(gl.goal);
      const tri = up ? [[x, y - 7], [x - 6, y + 4], [x + 6, y + 4]] : [[x, y + 7], [x - 6, y - 4], [x + 6, y - 4]];
      svg.append(s("polygon", { points: tri.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "), class: "goal", stroke: colour[gl.structure] || "#000" },
        s("title", { text: "goal: " + gl.structure + " " + gl.goal })));
    }
    return svg;
  }

  function dvhTable(curves, machineList) {
    if (!curves.length) return muted("Nothing selected.");
    const std = machineList[0];
    const base = {};
    for (const c of curves) if (c.machine === std) base[c.structure] = c.m;
    const cols = [["volume_cc", "volume (cm³)"], ["min_gy", "min"], ["mean_gy", "mean"], ["max_gy", "max"], ["d98_gy", "D98"], ["d95_gy", "D95"], ["d50_gy", "D50"], ["d2_gy", "D2"]];
    const sorted = curves.slice().sort(function (a, b) {
      return a.structure === b.structure ? machineList.indexOf(a.machine) - machineList.indexOf(b.machine) : String(a.structure).localeCompare(String(b.structure));
    });
    return table(["structure", "plan"].concat(cols.map(function (c) { return c[1] + (c[0] === "volume_cc" ? "" : " (Gy)"); })), sorted.map(function (c) {
      return h("tr", null, h("td", { text: c.structure }), h("td", { text: c.machine + (c.withheld ? " (not released)" : "") }), cols.map(function (col) {
        const v = c.m[col[0]];
        const b = base[c.structure];
        const cell = h("td", { class: "num", text: fmt.num(v, col[0] === "volume_cc" ? 1 : 2) });
        if (b && c.machine !== std && col[0] !== "volume_cc" && isFinite(Number(v)) && isFinite(Number(b[col[0]]))) {
          const d = Number(v) - Number(b[col[0]]);
          cell.append(h("span", { class: "delta", text: " (" + (d >= 0 ? "+" : "") + d.toFixed(2) + ")" }));
        }
        return cell;
      }));
    }), "grid compact");
  }

  // RFC 4180 CSV (quoted fields, doubled quotes) -> objects keyed by the header
  function parseCsv(text) {
    const rows = [];
    let row = [], field = "", i = 0, quoted = false;
    while (i < text.length) {
      const ch = text[i];
      if (quoted) {
        if (ch === '"') { if (text[i + 1] === '"') { field += '"'; i++; } else quoted = false; } else field += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") { row.push(field); field = ""; }
      else if (ch === "\n" || ch === "\r") {
        if (ch === "\r" && text[i + 1] === "\n") i++;
        row.push(field); field = "";
        if (row.length > 1 || row[0] !== "") rows.push(row);
        row = [];
      } else field += ch;
      i++;
    }
    if (field !== "" || row.length) { row.push(field); rows.push(row); }
    if (!rows.length) return [];
    const head = rows[0];
    return rows.slice(1).map(function (r) {
      const o = {};
      head.forEach(function (k, j) { o[k] = r[j]; });
      return o;
    });
  }

  // ------------------------------------------------------------------ machines
  function machinesView(root) {
    const listBox = h("div", null, muted("Loading machines…"));
    const msg = h("div", { class: "msg", role: "status" });
    const bookingsBox = h("div");
    root.append(h("h1", { text: "Treatment machines" }),
      muted("Marking a machine down moves its pending bookings to the best usable machine and re-plans those patients for it (convert → QA → export). Estimated wait = pending fractions × slot length."),
      msg, listBox, bookingsBox);
    let openBookings = null;
    const drafts = {};

    async function setStatus(name, body) {
      try {
        const r = await call("machineStatus", { name: name }, { body: body });
        const st = r.status || {};
        const lines = [h("p", { class: "ok", text: r.machine + " is now " + st.state + (st.cause ? " (" + st.cause + ")" : "") + "." })];
        for (const b of r.moved || []) lines.push(h("p", { text: "moved: job " + b.job_id + " (patient " + b.patient_id + ") → " + (b.moved_to || "no usable machine") + (b.move_reason ? ": " + b.move_reason : "") }));
        for (const b of r.placed || []) lines.push(h("p", { text: "placed: job " + b.job_id + " on " + b.machine }));
        fill(msg, lines);
        p.now();
      } catch (e) { fill(msg, h("p", { class: "err", text: "Status change refused: " + e.message })); }
    }

    function actionsFor(m) {
      const st = m.status || {};
      const out = [];
      if (st.state !== "down") {
        const cause = h("select", { "aria-label": "cause" }, h("option", { value: "malfunction", text: "malfunction" }), h("option", { value: "maintenance", text: "maintenance" }));
        const draft = drafts[m.name] || (drafts[m.name] = { cause: "malfunction", reason: "" }); // survives the 5 s refresh
        cause.value = draft.cause;
        cause.addEventListener("change", function () { draft.cause = cause.value; });
        const reason = h("input", { type: "text", placeholder: "reason (who, what)", class: "reason", "aria-label": "reason", value: draft.reason });
        reason.addEventListener("input", function () { draft.reason = reason.value; });
        out.push(h("span", { class: "inline" }, cause, reason, h("button", {
          type: "button", class: "danger", text: "Mark down", onclick: function () {
            if (!window.confirm("Mark " + m.name + " down (" + cause.value + ")? Its " + m.bookings + " booking(s) move to another machine and are re-planned.")) return;
            delete drafts[m.name];
            setStatus(m.name, { state: "down", cause: cause.value, reason: reason.value });
          },
        })));
      }
      if (st.state !== "available") {
        out.push(h("button", { type: "button", text: "Mark available", onclick: function () { setStatus(m.name, { state: "available", reason: "back in service (web view)" }); } }));
      }
      out.push(h("button", { type: "button", class: "link", text: "bookings", onclick: function () { openBookings = m.name; loadBookings(); } }));
      return out;
    }

    async function loadBookings() {
      if (!openBookings) return;
      const name = openBookings;
      try {
        const r = await call("machineBookings", { name: name });
        const bs = r.bookings || [];
        fill(bookingsBox, section("Bookings on " + name,
          bs.length ? table(["job", "patient", "plan", "fractions", "state", "booked", "moved from", "why moved", "history"], bs.map(function (b) {
            return h("tr", null, h("td", null, jobLink(b.job_id)), h("td", { class: "mono", text: b.patient_id }), h("td", { class: "mono", text: b.plan_id || "converting…" }),
              h("td", { class: "num", text: b.fractions_delivered + " / " + b.fractions }), h("td", null, badge(b.state)), h("td", { text: fmt.date(b.booked_at) }),
              h("td", { text: b.moved_from || "" }), h("td", { class: "wrap", text: b.move_reason || "" }),
              h("td", null, (b.history || []).length ? h("details", null, h("summary", { text: b.history.length + " entries" }), h("ul", { class: "plain" }, b.history.map(function (x) { return h("li", { text: x }); }))) : ""));
          })) : muted("No active bookings.")));
      } catch (e) { fill(bookingsBox, section("Bookings on " + name, muted(e.message))); }
    }

    const p = poller(async function () {
      if (busyTyping(root)) return; // do not wipe a reason being typed
      const r = await call("machines");
      const ms = r.machines || [];
      fill(listBox, ms.length ? table(["machine", "status", "since", "reason", "bookings", "pending fractions", "slot", "estimated wait", ""], ms.map(function (m) {
        const st = m.status || {};
        return h("tr", { class: st.state === "down" ? "down" : "" },
          h("td", { class: "mono", text: m.name }),
          h("td", null, badge(st.state), st.cause ? " " + st.cause : ""),
          h("td", { text: fmt.date(st.since) }),
          h("td", { class: "wrap", text: st.reason || "" }),
          h("td", { class: "num", text: m.bookings }),
          h("td", { class: "num", text: m.pending_fractions }),
          h("td", { class: "num", text: fmt.num(m.slot_minutes, 0) + " min" }),
          h("td", { class: "num", text: st.state === "down" ? "— (down)" : fmt.minutes(m.estimated_wait_min) }),
          h("td", { class: "actions" }, actionsFor(m)));
      })) : muted("No treatment machines configured (configs/machines/)."));
      await loadBookings();
    }, 5000, "machines");
    return { stop: p.stop };
  }

  // ------------------------------------------------------------------ cluster and queue
  function clusterView(root) {
    const top = h("div", { class: "cards" });
    const queueBox = h("div", null, muted("Loading queue…"));
    const nodesBox = h("div");
    const compBox = h("div");
    const tasksBox = h("div");
    root.append(h("h1", { text: "Cluster and compute queue" }), top,
      section("Compute queue", queueBox), section("Controlled computers", compBox), section("Ray nodes", nodesBox), section("Ray tasks", tasksBox));

    const p = poller(async function () {
      const r = await Promise.all([call("queue"), call("cluster").catch(function (e) { return e; })]);
      const q = r[0], c = r[1];
      const queued = q.queued || [], running = q.running || [];
      fill(queueBox, 
        h("h3", { text: "Running (" + running.length + ")" }),
        running.length ? table(["job", "computer", "stage", "tasks"], running.map(function (x) {
          return h("tr", null, h("td", null, jobLink(x.job_id)), h("td", { class: "mono", text: x.worker || "—" }), h("td", { text: x.stage || "—" }), h("td", { class: "num", text: x.tasks_total ? x.tasks_done + " / " + x.tasks_total : "" }));
        })) : muted("Nothing running."),
        h("h3", { text: "Queued (" + queued.length + ")" }),
        queued.length ? table(["position", "job", "priority", "submitted", "waiting"], queued.map(function (x) {
          return h("tr", null, h("td", { class: "num", text: "#" + (x.position + 1) }), h("td", null, jobLink(x.job_id)), h("td", { class: "num", text: x.priority }), h("td", { text: fmt.date(x.created_at) }), h("td", { text: fmt.span(x.created_at, null) }));
        })) : muted("The queue is empty."),
        muted("A job starts when a computer is idle and " + fmt.num(q.job_cpus, 1) + " CPU(s) are free; free now: " + fmt.num(q.free_cpus, 1) + "."));
      if (c instanceof Error) {
        fill(top);
        fill(nodesBox, muted("Cluster facts unavailable: " + c.message));
        fill(compBox);
        fill(tasksBox);
        return;
      }
      const used = (c.cpus_total || 0) - (c.cpus_free || 0);
      fill(top, 
        h("div", { class: "card" }, h("div", { class: "card-v", text: fmt.num(c.cpus_total, 0) }), h("div", { class: "card-l", text: "CPUs" })),
        h("div", { class: "card" }, h("div", { class: "card-v", text: fmt.num(c.cpus_free, 1) }), h("div", { class: "card-l", text: "CPUs free" }), bar(c.cpus_total ? 100 * used / c.cpus_total : 0)),
        h("div", { class: "card" }, h("div", { class: "card-v", text: (c.nodes || []).filter(function (n) { return n.alive; }).length + " / " + (c.nodes || []).length }), h("div", { class: "card-l", text: "nodes alive" })),
        h("div", { class: "card" }, h("div", { class: "card-v", text: (c.computers || []).length }), h("div", { class: "card-l", text: "computers" })),
        h("div", { class: "card b-queued" }, h("div", { class: "card-v", text: queued.length }), h("div", { class: "card-l", text: "queued jobs" })));
      fill(nodesBox, (c.nodes || []).length ? table(["node", "alive", "address", "CPUs", "memory", "object store"], c.nodes.map(function (n) {
        return h("tr", null, h("td", { class: "mono", title: n.node_id, text: String(n.node_id).slice(0, 12) }), h("td", null, badge(n.alive ? "alive" : "dead")),
          h("td", { class: "mono", text: n.address || "—" }), h("td", { class: "num", text: fmt.num(n.cpus, 0) }),
          h("td", { class: "num", text: fmt.num(n.memory_gib, 1) + " GiB" }), h("td", { class: "num", text: fmt.num(n.object_store_gib, 2) + " GiB" }));
      })) : muted("No nodes."));
      fill(compBox, (c.computers || []).length ? table(["computer", "alive", "job", "stage", "progress", "jobs done", "up", "host / pid"], c.computers.map(function (k) {
        return h("tr", null, h("td", { class: "mono", text: k.name }), h("td", null, badge(k.alive ? "alive" : "silent")),
          h("td", null, k.job ? jobLink(k.job) : "idle"), h("td", { text: k.stage || "—" }),
          h("td", null, k.progress === null || k.progress === undefined ? "—" : bar(k.progress)),
          h("td", { class: "num", text: k.jobs_done === undefined ? "—" : k.jobs_done }), h("td", { text: fmt.secs(k.uptime_s) }),
          h("td", { class: "mono", text: (k.host || "?") + " / " + (k.pid || "?") }));
      })) : muted("No controlled computers."));
      const t = c.tasks || {};
      if (t.reason) fill(tasksBox, muted("Task states unavailable (the Ray dashboard / state API is not running): " + t.reason));
      else {
        const ks = Object.keys(t);
        fill(tasksBox, ks.length ? h("div", { class: "cards" }, ks.map(function (k) { return h("div", { class: "card" }, h("div", { class: "card-v", text: t[k] }), h("div", { class: "card-l", text: k.toLowerCase() })); })) : muted("No tasks."));
      }
    }, 5000, "cluster");
    return { stop: p.stop };
  }

  // ------------------------------------------------------------------ upload
  // A patient's DICOM files or a zip of them (POST /patients): what was found is shown, with a link to
  // start from. The import runs on the service's compute; the answer lists series, structures, doses.
  function uploadView(root) {
    const input = h("input", { type: "file", name: "files", multiple: true, accept: ".zip,.dcm,application/zip,application/dicom" });
    // a whole DICOM folder (chosen or dropped on the field): every file below it
    const folder = h("input", { type: "file", name: "folder", multiple: true, webkitdirectory: "", "aria-label": "a DICOM folder" });
    const out = h("div", { class: "upload-result", role: "status" });
    const form = h("form", { class: "upload", onsubmit: async function (ev) {
      ev.preventDefault();
      const chosen = Array.from(input.files).concat(Array.from(folder.files));
      if (!chosen.length) { fill(out, h("p", { class: "err", text: "Choose a zip, the DICOM files or their folder first." })); return; }
      const data = new FormData();
      for (const f of chosen) data.append("files", f, f.name);
      fill(out, muted("Uploading " + chosen.length + " file(s)…"));
      try {
        const p = await call("upload", null, { form: data });
        fill(out,
          h("p", { class: "ok", text: "Patient " + p.id + " stored: " + (p.patient_name || "(no name)") + ", " + (p.series || []).length + " series, " + (p.structures || []).length + " structures, " + (p.doses || []).length + " dose(s)." }),
          (p.structures || []).length ? table(["structure", "kind", "volume (cc)"], p.structures.map(function (s) {
            return h("tr", null, h("td", { text: s.name }), h("td", { text: s.kind || "" }), h("td", { class: "num", text: fmt.num(s.volume_cc, 1) }));
          })) : muted("No structures: delineate them before planning."),
          (p.warnings || []).length ? h("ul", { class: "notes" }, p.warnings.map(function (w) { return h("li", { text: w }); })) : null,
          h("p", { class: "next" }, h("a", { href: pageHash("patients", p.id, "order"), class: "button", text: "Write the order →" }),
            " ", h("a", { href: viewerHash("patients", p.id), class: "button", text: "Open viewer" })));
      } catch (e) {
        fill(out, h("p", { class: "err", text: "Upload refused: " + e.message }));
      }
    } }, h("label", null, "DICOM files or a zip ", input), " ", h("label", null, "or a folder ", folder), " ", h("button", { type: "submit", text: "Upload" }));
    root.append(h("h1", { text: "Upload a patient" }), muted("CT (MR, PET) series with their RTSTRUCT, RTDOSE or RTPLAN, as files or one zip."), form, out);
    return { stop: function () {} };
  }

  // ------------------------------------------------------------------ order
  // Writing a patient's medical order (prescription, dose levels of a simultaneous boost, clinical
  // goals with ranks), choosing machines and starting the planning job (POST /jobs). The service
  // validates the order against the patient's structures; its 422 names the field (e.g.
  // goals.3.structure), and the message is shown next to that field. Nothing is stored until the
  // job is accepted.
  const FAST_PREVIEW = { num_beams: 5, dose_grid_mm: 5.0, bixel_mm: 5.0, fmo_iterations: 40, dao_rounds: 1, dao_iterations: 8, max_segments: 5, qa_bixel_mm: 5.0 };

  function orderView(root, patientId) {
    const msg = h("div", { class: "msg", role: "status" });
    const patientBox = h("div", null, muted("Loading patient…"));
    const formBox = h("div");
    root.append(h("p", { class: "crumbs" }, h("a", { href: "#/upload", text: "← upload" })),
      h("h1", null, "Order for patient ", h("span", { class: "mono", text: patientId })), msg,
      section("Patient and structures", patientBox), formBox);
    let patient = null, machines = [];
    const state = { target: "", total: 60, fractions: 30, levels: [], goals: [], machines: {}, options: "{}", priority: 0, name: "" };

    async function load() {
      try {
        const r = await Promise.all([call("patient", { patient_id: patientId }), call("machines").catch(function () { return { machines: [] }; })]);
        patient = r[0];
        machines = (r[1].machines || []).map(function (m) { return m.name; });
        if (!state.target) {
          const t = targets()[0];
          state.target = t ? t.name : ((patient.structures || [])[0] || {}).name || "";
        }
        renderPatient();
        renderForm();
      } catch (e) { fill(patientBox, muted("Patient " + patientId + ": " + e.message)); }
    }

    function structures() { return (patient && patient.structures) || []; }
    function targets() { return structures().filter(function (x) { return x.kind === "target"; }); }

    function renderPatient() {
      const auto = h("button", { type: "button", text: "Delineate automatically (External, lungs, bones, cavities)", onclick: async function () {
        auto.disabled = true;
        fill(msg, muted("Delineating…"));
        try {
          const r = await call("structures", { patient_id: patientId }, { body: { method: "auto" } });
          const made = (r.changed || []).map(function (x) { return x.name || x; });
          fill(msg, h("p", { class: "ok", text: "Delineation done" + (made.length ? ": " + made.join(", ") : "") + "." }));
          patient = await call("patient", { patient_id: patientId });
          renderPatient();
          renderForm();
        } catch (e) { fill(msg, h("p", { class: "err", text: "Delineation refused: " + e.message })); auto.disabled = false; }
      } });
      fill(patientBox,
        h("p", { text: (patient.patient_name || "(no name)") + " · " + (patient.series || []).map(function (x) { return x.modality; }).join(", ") }),
        structures().length ? table(["", "structure", "kind", "volume"], structures().map(function (st) {
          return h("tr", null, h("td", null, swatch(structureColour(st))), h("td", { text: st.name }), h("td", { text: st.kind }), h("td", { class: "num", text: fmt.num(st.volume_cc, 1) + " cm³" }));
        }), "grid compact") : muted("No structures yet."),
        h("div", { class: "actions" }, auto));
    }

    // one select of the patient's structures
    function structureSelect(value, onchange, label) {
      const sel = h("select", { "aria-label": label || "structure" }, structures().map(function (x) { return h("option", { value: x.name, text: x.name + " (" + x.kind + ")", selected: x.name === value }); }));
      if (value && !structures().some(function (x) { return x.name === value; })) sel.append(h("option", { value: value, text: value + " (not in the patient)", selected: true }));
      sel.addEventListener("change", function () { onchange(sel.value); });
      return sel;
    }

    function errSlot(field) { return h("span", { class: "field-err", dataset: { errFor: field }, role: "alert" }); }
    function num(value, onchange, attrs) {
      const el = h("input", Object.assign({ type: "number", step: "any", value: value === null || value === undefined ? "" : value, class: "short" }, attrs || {}));
      el.addEventListener("input", function () { onchange(el.value === "" ? null : Number(el.value)); });
      return el;
    }

    function levelOf(name) {
      if (name === state.target) return state.total;
      const l = state.levels.find(function (x) { return x.structure === name; });
      return l ? l.dose_gy : null;
    }

    // The template: per target its D95 >= level (rank 1) and D2 <= 107 % (rank 2); per organ a
    // maximum to fill in (rank 3); the body a maximum of 110 % of the prescription (rank 4).
    function applyTemplate() {
      const goals = [];
      const tnames = [state.target].concat(state.levels.map(function (l) { return l.structure; })).filter(function (x, i, a) { return x && a.indexOf(x) === i; });
      for (const t of tnames) {
        const lvl = levelOf(t);
        goals.push({ structure: t, metric: "D95", op: ">=", value: lvl, unit: null, rank: 1 });
        goals.push({ structure: t, metric: "D2", op: "<=", value: lvl === null ? null : Math.round(lvl * 1.07 * 100) / 100, unit: null, rank: 2 });
      }
      for (const st of structures()) {
        if (tnames.indexOf(st.name) >= 0 || st.kind === "target" || st.kind === "support") continue;
        if (st.kind === "external") goals.push({ structure: st.name, metric: "max", op: "<=", value: Math.round(state.total * 1.1 * 100) / 100, unit: null, rank: 4 });
        else goals.push({ structure: st.name, metric: "max", op: "<=", value: null, unit: null, rank: 3 });
      }
      state.goals = goals;
      renderForm();
    }

    function renderForm() {
      const rx = h("fieldset", { class: "rx" }, h("legend", { text: "Prescription" }),
        h("label", null, "target ", structureSelect(state.target, function (v) { state.target = v; }, "prescription target"), errSlot("prescription.target")),
        h("label", null, "total dose (Gy) ", num(state.total, function (v) { state.total = v; }, { name: "total_dose_gy", min: "0" }), errSlot("prescription.total_dose_gy")),
        h("label", null, "fractions ", num(state.fractions, function (v) { state.fractions = v; }, { name: "fractions", min: "1", step: "1" }), errSlot("prescription.fractions")),
        h("label", null, "order name ", h("input", { type: "text", value: state.name, placeholder: "e.g. H&N SIB 70/63/56", oninput: function (ev) { state.name = ev.target.value; } })));
      const levels = h("fieldset", { class: "levels" }, h("legend", { text: "Other dose levels (simultaneous integrated boost)" }),
        state.levels.length ? null : muted("One dose level: the prescription."),
        state.levels.map(function (l, i) {
          return h("div", { class: "row" }, structureSelect(l.structure, function (v) { l.structure = v; }, "dose level target " + (i + 1)),
            num(l.dose_gy, function (v) { l.dose_gy = v; }, { "aria-label": "dose level " + (i + 1) + " (Gy)", min: "0" }), " Gy ",
            h("button", { type: "button", class: "link", text: "remove", onclick: function () { state.levels.splice(i, 1); renderForm(); } }),
            errSlot("dose_levels." + l.structure));
        }),
        h("button", { type: "button", text: "Add a dose level", onclick: function () {
          const t = targets().find(function (x) { return x.name !== state.target && !state.levels.some(function (l) { return l.structure === x.name; }); });
          state.levels.push({ structure: t ? t.name : (structures()[0] || {}).name, dose_gy: null });
          renderForm();
        } }), errSlot("dose_levels"));
      const goalRows = state.goals.map(function (g, i) {
        const op = h("select", { "aria-label": "goal " + (i + 1) + " comparison" }, h("option", { value: ">=", text: "≥", selected: g.op === ">=" }), h("option", { value: "<=", text: "≤", selected: g.op === "<=" }));
        op.addEventListener("change", function () { g.op = op.value; });
        const metric = h("input", { type: "text", value: g.metric, class: "short", "aria-label": "goal " + (i + 1) + " metric", placeholder: "D95, D0.1cc, mean, max, V20Gy" });
        metric.addEventListener("input", function () { g.metric = metric.value.trim(); });
        const unit = h("select", { "aria-label": "goal " + (i + 1) + " unit" }, ["Gy", "%", "cc"].map(function (u) { return h("option", { value: u, text: u, selected: (g.unit || "Gy") === u }); }));
        unit.addEventListener("change", function () { g.unit = unit.value === "Gy" ? null : unit.value; });
        return h("tr", { dataset: { goal: String(i) } },
          h("td", null, structureSelect(g.structure, function (v) { g.structure = v; }, "goal " + (i + 1) + " structure")),
          h("td", null, metric), h("td", null, op),
          h("td", null, num(g.value, function (v) { g.value = v; }, { "aria-label": "goal " + (i + 1) + " value" })), h("td", null, unit),
          h("td", null, num(g.rank, function (v) { g.rank = v; }, { "aria-label": "goal " + (i + 1) + " rank", min: "1", step: "1" })),
          h("td", null, h("button", { type: "button", class: "link", text: "remove", onclick: function () { state.goals.splice(i, 1); renderForm(); } }), errSlot("goals." + i)));
      });
      const goals = h("fieldset", { class: "goals" }, h("legend", { text: "Clinical goals (rank 1 = most important; planned automatically from these)" }),
        goalRows.length ? table(["structure", "metric", "", "value", "unit", "rank", ""], goalRows, "grid compact") : muted("No goals yet: fill them from the template or add them one by one."),
        h("div", { class: "actions" },
          h("button", { type: "button", text: "Fill from template", onclick: applyTemplate }),
          h("button", { type: "button", text: "Add a goal", onclick: function () { state.goals.push({ structure: state.target, metric: "max", op: "<=", value: null, unit: null, rank: 2 }); renderForm(); } })),
        errSlot("goals"));
      const mach = h("fieldset", { class: "machines" }, h("legend", { text: "Treatment machines (in order of preference)" }),
        machines.length ? machines.map(function (m) {
          return h("label", { class: "chk" }, h("input", { type: "checkbox", name: "machine", value: m, checked: !!state.machines[m], onchange: function (ev) { state.machines[m] = ev.target.checked; } }), " " + m);
        }) : muted("No treatment machines configured."), errSlot("machines"));
      const opts = h("textarea", { rows: 3, cols: 70, name: "options", "aria-label": "planning options (JSON)", class: "mono" });
      opts.value = state.options;
      opts.addEventListener("input", function () { state.options = opts.value; });
      const planning = h("fieldset", { class: "planning" }, h("legend", { text: "Planning" }),
        h("label", null, "options (JSON; {} = the service's defaults) ", opts), errSlot("options"),
        h("div", { class: "actions" },
          h("button", { type: "button", text: "Defaults", onclick: function () { state.options = "{}"; opts.value = state.options; } }),
          h("button", { type: "button", text: "Fast preview (coarse)", onclick: function () { state.options = JSON.stringify(FAST_PREVIEW); opts.value = state.options; } })),
        h("label", null, "priority ", num(state.priority, function (v) { state.priority = v || 0; }, { step: "1" })));
      const go = h("button", { type: "submit", class: "primary", text: "Start planning" });
      const form = h("form", { class: "order", novalidate: true, onsubmit: async function (ev) {
        ev.preventDefault();
        await submit(form, go);
      } }, rx, levels, goals, mach, planning, h("div", { class: "actions" }, go));
      fill(formBox, section("Medical order", form));
    }

    function showErrors(form, errors) {
      for (const el of form.querySelectorAll(".field-err")) el.textContent = "";
      for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
      let shown = 0;
      for (const e of errors) {
        // the most specific slot: goals.3.structure -> goals.3 -> goals
        let f = e.field || "", slot = null;
        while (f && !slot) {
          slot = form.querySelector('.field-err[data-err-for="' + (window.CSS && CSS.escape ? CSS.escape(f) : f) + '"]');
          f = f.indexOf(".") >= 0 ? f.slice(0, f.lastIndexOf(".")) : "";
        }
        if (slot) {
          slot.textContent = e.message;
          const row = slot.closest("tr, label, .row, fieldset");
          if (row) row.classList.add("invalid");
          shown++;
        } else fill(msg, h("p", { class: "err", text: e.message }));
      }
      return shown;
    }

    // checks the form can make itself, before the service sees the order
    function localErrors() {
      const out = [];
      if (!state.target) out.push({ field: "prescription.target", message: "choose the prescription's target" });
      if (!(state.total > 0)) out.push({ field: "prescription.total_dose_gy", message: "the total dose must be a positive number of Gy" });
      if (!(Number.isInteger(state.fractions) && state.fractions >= 1)) out.push({ field: "prescription.fractions", message: "fractions must be a whole number ≥ 1" });
      state.levels.forEach(function (l) { if (!(l.dose_gy > 0)) out.push({ field: "dose_levels." + l.structure, message: "give this level's dose in Gy" }); });
      state.goals.forEach(function (g, i) {
        if (g.value === null || !isFinite(g.value)) out.push({ field: "goals." + i, message: "give the goal's value" });
        else if (!g.metric) out.push({ field: "goals." + i, message: "give the goal's metric (D95, D0.1cc, mean, max, V20Gy)" });
        else if (!(Number.isInteger(g.rank) && g.rank >= 1)) out.push({ field: "goals." + i, message: "the rank is a whole number ≥ 1" });
      });
      if (!Object.keys(state.machines).some(function (m) { return state.machines[m]; })) out.push({ field: "machines", message: "choose at least one treatment machine" });
      try { const o = JSON.parse(state.options || "{}"); if (o === null || typeof o !== "object" || Array.isArray(o)) throw new Error("not an object"); }
      catch (e) { out.push({ field: "options", message: "options must be a JSON object: " + e.message }); }
      return out;
    }

    async function submit(form, go) {
      fill(msg);
      const errors = localErrors();
      if (errors.length) { showErrors(form, errors); return; }
      showErrors(form, []);
      const order = { prescription: { target: state.target, total_dose_gy: state.total, fractions: state.fractions }, goals: state.goals.map(function (g) {
        const x = { structure: g.structure, metric: g.metric, op: g.op, value: g.value, rank: g.rank };
        if (g.unit && /^V/i.test(g.metric)) x.unit = g.unit;
        return x;
      }) };
      if (state.name) order.name = state.name;
      if (state.levels.length) { order.dose_levels = {}; for (const l of state.levels) order.dose_levels[l.structure] = l.dose_gy; }
      const body = { patient_id: patientId, order: order, machines: machines.filter(function (m) { return state.machines[m]; }), options: JSON.parse(state.options || "{}"), priority: state.priority };
      go.disabled = true;
      try {
        const job = await call("createJob", null, { body: body });
        location.hash = "#/jobs/" + encodeURIComponent(job.id);
      } catch (e) {
        go.disabled = false;
        // the service's field is relative to the request: order.goals.3 -> goals.3
        const field = String(e.field || "").replace(/^order\./, "");
        if (!showErrors(form, [{ field: field, message: e.message }])) fill(msg, h("p", { class: "err", text: "Order refused: " + e.message }));
      }
    }

    load();
    return { stop: function () {} };
  }

  // ------------------------------------------------------------------ image viewer
  // Axial, coronal and sagittal views with contours and doses (viewer.js, window.RayrtViewer): a
  // job's plans (#/jobs/<id>/viewer), or a patient's images and uploaded doses (#/patients/<id>/viewer).
  function viewerHash(kind, id) { return ["#", kind, encodeURIComponent(id), "viewer"].join("/"); }

  function viewerView(root, jobId, patientId) {
    const back = jobId ? h("a", { href: "#/jobs/" + encodeURIComponent(jobId), text: "← job" }) : h("a", { href: "#/upload", text: "← upload" });
    const box = h("div", { class: "viewer-root" });
    root.append(h("p", { class: "crumbs" }, back),
      h("h1", null, "Viewer ", h("span", { class: "mono", text: jobId || patientId })), box);
    if (!window.RayrtViewer) { fill(box, muted("The viewer script (viewer.js) did not load.")); return { stop: function () {} }; }
    return window.RayrtViewer.open(box, {
      info: async function () {
        if (!jobId) return call("patientViewer", { patient_id: patientId });
        try {
          return await call("jobViewer", { job_id: jobId });
        } catch (e) {
          if (e.status !== 409) throw e;
          const j = await call("job", { job_id: jobId }); // no plans yet: the patient's images
          return call("patientViewer", { patient_id: j.patient_id });
        }
      },
      urls: {
        slice: function (pid, plane, index, series) {
          return apiUrl("viewerSlice", { patient_id: pid, plane: plane, index: index }) + (series ? "?series=" + encodeURIComponent(series) : "");
        },
        masks: function (pid, plane, index, key) {
          return apiUrl("viewerMasks", { patient_id: pid, plane: plane, index: index }) + "?key=" + encodeURIComponent(key || "");
        },
        planDose: function (jid, machine, plane, index) { return apiUrl("viewerPlanDose", { job_id: jid, machine: machine, plane: plane, index: index }); },
        uploadDose: function (pid, n, plane, index) { return apiUrl("viewerUploadDose", { patient_id: pid, n: n, plane: plane, index: index }); },
        // one slice change in one answer: the image, the masks (the structure set's key keeps the
        // page's cache fresh) and the shown doses by their viewer ids
        view: function (v, plane, index, series, doses) {
          const q = ["key=" + encodeURIComponent(v.structure_key || "")];
          if (series) q.push("series=" + encodeURIComponent(series));
          for (const d of doses) q.push("dose=" + encodeURIComponent(d));
          const base = v.job_id ? apiUrl("viewerJobView", { job_id: v.job_id, plane: plane, index: index })
            : apiUrl("viewerPatientView", { patient_id: v.patient_id, plane: plane, index: index });
          return base + "?" + q.join("&");
        },
      },
      onUnauthorized: signInView,
    });
  }

  // ------------------------------------------------------------------ sign-in
  // The page signs in by exchanging a token for an HttpOnly session cookie (POST /session): the
  // token is never kept by the page, and every later request (fetch, EventSource) carries the cookie.
  const userEl = document.getElementById("user");
  let signingIn = false;

  async function showUser() {
    try {
      const me = await call("me");
      fill(userEl, me.name + " (" + me.role + ") ",
        h("button", { type: "button", class: "link", text: "sign out", onclick: async function () {
          try { await call("signOut", null, { text: true }); } catch (_) { /* signed out anyway */ }
          signInView();
        } }));
    } catch (_) { fill(userEl); }
  }

  function signInView() {
    if (signingIn) return;
    signingIn = true;
    if (current && current.stop) current.stop();
    current = null;
    fill(userEl);
    document.title = "rayrt: sign in";
    const input = h("input", { type: "password", name: "token", autocomplete: "current-password", placeholder: "rrt_…", size: 48, required: true });
    const msg = h("p", { class: "muted", text: "Paste your rayrt token (an admin gives one with `rayrt users add`)." });
    const form = h("form", { class: "signin", onsubmit: async function (ev) {
      ev.preventDefault();
      try {
        await call("signIn", null, { body: { token: input.value } });
        signingIn = false;
        showUser();
        route();
      } catch (e) {
        msg.textContent = "Sign-in failed: " + (e.message || String(e));
      }
    } }, h("label", null, "Token ", input), " ", h("button", { type: "submit", text: "Sign in" }));
    fill(view, h("h2", { text: "Sign in" }), msg, form);
    input.focus();
  }

  // ------------------------------------------------------------------ router
  const view = document.getElementById("view");
  let current = null;

  function route() {
    if (current && current.stop) current.stop();
    current = null;
    clearError();
    let parts;
    try {
      parts = (location.hash || "#/jobs").replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    } catch (_) {
      parts = ["jobs"];
    }
    const name = parts[0] || "jobs";
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
    fill(view);
    if ((name === "jobs" || name === "patients") && parts[1] && parts[2] === "viewer") {
      document.title = "rayrt: viewer " + parts[1];
      current = viewerView(view, name === "jobs" ? parts[1] : null, name === "patients" ? parts[1] : null);
    }
    else if (name === "jobs" && parts[1]) { document.title = "rayrt: job " + parts[1]; current = jobView(view, parts[1]); }
    else if (name === "machines") { document.title = "rayrt: machines"; current = machinesView(view); }
    else if (name === "upload") { document.title = "rayrt: upload"; current = uploadView(view); }
    else if (name === "patients" && parts[1] && parts[2] === "order") { document.title = "rayrt: order for " + parts[1]; current = orderView(view, parts[1]); }
    else if (name === "cluster") { document.title = "rayrt: cluster"; current = clusterView(view); }
    else { document.title = "rayrt: jobs"; current = jobsView(view); }
  }

  window.addEventListener("hashchange", function () { if (!signingIn) route(); });
  route();
  showUser();
  checkHealth();
  setInterval(function () { if (!document.hidden) checkHealth(); }, 15000);
})();
