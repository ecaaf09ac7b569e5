/* orch web UI: token, fragments, the live event stream, actions, logs, run page.
   No framework and no build step. Every piece of cluster data that reaches the
   DOM from here goes in as text (textContent, createTextNode), never as HTML;
   HTML comes only from the server's escaped fragments. */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const meta = (name) => (($(`meta[name="${name}"]`) || {}).content || "");
  const BASE = meta("orch-base");
  const API = meta("orch-api");
  const PAGE = document.body.dataset.page;
  const TOKEN_KEY = "orch-token";
  const enc = encodeURIComponent;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const main = $("#main");

  /* ---- token and calls ------------------------------------------------- */

  let tokenWaiters = [];

  /* refused: the token given was answered 401, and the form says so. */
  function askToken(refused) {
    $("#token-form label").textContent = refused
      ? "That token was refused: this server needs its API token"
      : "This server needs its API token";
    return new Promise((resolve) => {
      tokenWaiters.push(resolve);
      const form = $("#token-form");
      if (form.hidden) {
        form.hidden = false;
        $("#token-input").focus();
      }
    });
  }

  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("#token-input").value = "";
    $("#token-form").hidden = true;
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach((resolve) => resolve());
  });

  /* fetch with the bearer token; a 401 asks for the token and tries again. */
  async function call(url, opts) {
    opts = opts || {};
    if (meta("orch-auth") === "token" && !sessionStorage.getItem(TOKEN_KEY)) await askToken();
    for (;;) {
      const headers = Object.assign({}, opts.headers || {});
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = "Bearer " + token;
      const resp = await fetch(url, Object.assign({}, opts, {
        headers, credentials: "same-origin", cache: "no-store",
      }));
      if (resp.status !== 401) return resp;
      sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
    }
  }

  async function errorOf(resp) {
    const text = await resp.text();
    try {
      return JSON.parse(text).error || `HTTP ${resp.status}`;
    } catch (e) {
      return `HTTP ${resp.status}`;
    }
  }

  /* POST/PUT/DELETE to the JSON API; the answer's JSON, or an Error with its message. */
  async function send(method, path, body) {
    const opts = { method, headers: {} };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const resp = await call(API + path, opts);
    if (!resp.ok) throw new Error(await errorOf(resp));
    return resp.json();
  }

  function notice(text, isError) {
    const box = $("#notice");
    box.textContent = text;
    box.classList.toggle("error", !!isError);
    box.hidden = !text;
  }

  /* ---- fragments --------------------------------------------------------- */

  const FRAGMENT = PAGE === "run" ? "" : location.pathname + "?fragment=1";
  let loading = false;
  let again = false;
  let leaving = false; /* a delete in progress: the page's job is going away, load nothing more */
  const filters = { q: "", status: "" };

  async function loadFragment() {
    if (!FRAGMENT || leaving) return;
    if (loading) { again = true; return; }
    loading = true;
    try {
      const resp = await call(FRAGMENT);
      if (resp.ok) swap(await resp.text());
      else showMainError(await errorOf(resp));
    } catch (e) {
      if (!main.children.length || $(".loading", main)) showMainError("the server does not answer");
    } finally {
      loading = false;
    }
    if (again) { again = false; loadFragment(); }
  }

  function showMainError(message) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message;
    main.replaceChildren(p);
    main.removeAttribute("aria-busy");
  }

  /* Replace #main's content, keeping focus, caret, open <details> and filters. */
  function swap(html) {
    const active = document.activeElement;
    const focusId = active && main.contains(active) ? active.id : "";
    const caret = focusId && "selectionStart" in active ? [active.selectionStart, active.selectionEnd] : null;
    const open = new Set($$("details[open]", main).map((d) => d.closest("[data-node-id]")?.dataset.nodeId));
    const tpl = document.createElement("template");
    tpl.innerHTML = html;
    main.replaceChildren(tpl.content);
    main.removeAttribute("aria-busy");
    $$("details", main).forEach((d) => {
      if (open.has(d.closest("[data-node-id]")?.dataset.nodeId)) d.open = true;
    });
    afterSwap();
    if (focusId && document.getElementById(focusId)) {
      const el = document.getElementById(focusId);
      el.focus();
      if (caret) try { el.setSelectionRange(caret[0], caret[1]); } catch (e) { /* not a text field */ }
    }
  }

  function afterSwap() {
    if (PAGE === "jobs") {
      const search = $("#search");
      const filter = $("#status-filter");
      if (search) search.value = filters.q;
      if (filter) filter.value = filters.status;
      applyFilters();
    }
    if (PAGE === "job") {
      /* The last list at once (no "loading" flash on every change), then fresh. */
      if (versions.length && $("#versions")) renderVersions($("#versions"));
      loadVersions();
    }
    if (PAGE === "alloc") syncLogTasks();
  }

  function applyFilters() {
    const q = filters.q.toLowerCase();
    $$("#jobs-table tr[data-job-id]").forEach((row) => {
      const hit = row.dataset.jobId.toLowerCase().includes(q) &&
        (!filters.status || row.dataset.status === filters.status);
      row.hidden = !hit;
    });
  }

  document.addEventListener("click", (event) => {
    const cell = event.target.closest("div.kv");
    if (cell) cell.classList.toggle("open");
  });
  document.addEventListener("input", (event) => {
    if (event.target.id === "search") { filters.q = event.target.value; applyFilters(); }
  });
  document.addEventListener("change", (event) => {
    if (event.target.id === "status-filter") { filters.status = event.target.value; applyFilters(); }
  });
  document.addEventListener("keydown", (event) => {
    const tag = (event.target.tagName || "").toLowerCase();
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (["input", "textarea", "select"].includes(tag) || event.target.isContentEditable) return;
    const search = $("#search");
    if (search) { event.preventDefault(); search.focus(); search.select(); }
  });

  /* Ages tick on between fragment loads: "5m" becomes "6m", the title keeps the exact time. */
  function fmtAge(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s >= 86400) return Math.floor(s / 86400) + "d";
    if (s >= 3600) return Math.floor(s / 3600) + "h";
    if (s >= 60) return Math.floor(s / 60) + "m";
    return s + "s";
  }
  setInterval(() => {
    $$("time[datetime]", main).forEach((t) => {
      const at = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(at)) t.textContent = t.textContent.replace(/^\d+[smhd]/, fmtAge(Date.now() - at));
    });
  }, 10000);

  /* ---- the event stream ------------------------------------------------- */

  /* Server-sent events from a fetch body: fetch, not EventSource, so that the
     token travels in a header and never in a URL. */
  async function readEvents(body, onEvent, onChunk) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      if (onChunk) onChunk();
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        block.split("\n").forEach((line) => {
          if (!line || line.startsWith(":")) return;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = val;
          else if (field === "data") data.push(val);
        });
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  function banner(lost) { $("#conn-banner").hidden = !lost; }

  let reloadTimer = null;
  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(loadFragment, 100);
  }

  async function watch() {
    let delay = 500;
    let first = true;
    for (;;) {
      const abort = new AbortController();
      let watchdog = null;
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(), 40000); /* keepalives come every 15 s */
      };
      let lost = true;
      try {
        const resp = await call(BASE + "/events", { headers: { Accept: "text/event-stream" }, signal: abort.signal });
        if (resp.status === 404) {
          lost = false; /* a server without streams: no live updates, try again later */
          if (first) loadFragment();
        } else if (!resp.ok || !resp.body) {
          throw new Error(`HTTP ${resp.status}`);
        } else {
          alive();
          banner(false);
          delay = 500;
          await readEvents(resp.body, (name) => {
            /* hello: (re)connected, whatever changed meanwhile is shown now */
            if (name === "hello" || name === "change") scheduleReload();
          }, alive);
        }
      } catch (e) {
        if (first) loadFragment();
      } finally {
        clearTimeout(watchdog);
      }
      first = false;
      banner(lost);
      await sleep(delay);
      delay = Math.min(delay * 2, lost ? 8000 : 30000);
    }
  }

  /* ---- job page: actions and versions -------------------------------------- */

  const ACTIONS = {
    "btn-stop": { ask: "Stop job %s? Its allocations will be stopped.", run: (id) => send("DELETE", `/jobs/${enc(id)}`) },
    "btn-restart": { ask: "Run the stopped job %s again?", run: (id) => send("POST", `/jobs/${enc(id)}/restart`, {}) },
    "btn-delete": { ask: "Delete job %s and everything it left behind? This cannot be undone.", run: (id) => send("POST", `/jobs/${enc(id)}/delete`, {}) },
    "btn-promote": { ask: "Promote deployment %s? Its canaries replace the old copies.", run: (id) => send("POST", `/deployments/${enc(id)}/promote`, {}) },
    "btn-fail": { ask: "Fail deployment %s? With auto_revert the job rolls back.", run: (id) => send("POST", `/deployments/${enc(id)}/fail`, {}) },
  };

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const action = ACTIONS[button.id];
    if (action) {
      const id = button.dataset.jobId || button.dataset.deploymentId;
      if (!window.confirm(action.ask.replace("%s", id))) return;
      button.disabled = true;
      if (button.id === "btn-delete") {
        /* No reload may race the delete: it would fetch a job that is gone (a 404). */
        leaving = true;
        while (loading) await sleep(20);
      }
      try {
        const answer = await action.run(id);
        notice(answer.message || "done");
        if (button.id === "btn-delete") { location.assign(`${BASE}/jobs`); return; }
      } catch (e) {
        leaving = false;
        notice(e.message, true);
      }
      loadFragment();
    } else if (button.classList.contains("revert")) {
      revert(button);
    } else if (button.classList.contains("show-diff")) {
      showDiff(button.dataset.version);
    }
  });

  let versions = [];
  let shownDiff = null;

  async function loadVersions() {
    const box = $("#versions");
    if (!box) return;
    try {
      const resp = await call(`${API}/jobs/${enc(box.dataset.jobId)}/versions`);
      if (resp.status === 404) { box.textContent = "Versions are not kept by this server."; return; }
      if (!resp.ok) throw new Error(await errorOf(resp));
      versions = (await resp.json()).versions || [];
    } catch (e) {
      box.textContent = "Versions could not be loaded: " + e.message;
      return;
    }
    renderVersions(box);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderVersions(box) {
    box.replaceChildren();
    versions.forEach((v, i) => {
      const row = el("div", { class: "version", "data-version": String(v.version) });
      const when = v.submit_time ? new Date(v.submit_time * 1000) : null;
      row.append(el("strong", {}, `v${v.version}`));
      if (when) row.append(el("time", { datetime: when.toISOString(), title: when.toISOString() }, fmtAge(Date.now() - when) + " ago"));
      const changes = (v.diff || []).length;
      row.append(el("span", { class: "muted" }, i === 0 ? "current" : `${changes} change${changes === 1 ? "" : "s"}`));
      if (v.stable) row.append(el("span", { class: "muted" }, "stable"));
      row.append(el("button", { type: "button", class: "show-diff", "data-version": String(v.version) }, "Diff"));
      if (i > 0) row.append(el("button", { type: "button", class: "revert", "data-version": String(v.version) }, "Revert"));
      box.append(row);
    });
    if (!versions.length) box.textContent = "No versions recorded.";
    if (shownDiff !== null) showDiff(shownDiff);
  }

  function showDiff(version) {
    const v = versions.find((x) => String(x.version) === String(version));
    const out = $("#version-diff");
    if (!v || !out) return;
    shownDiff = String(version);
    $$(".version").forEach((row) => row.classList.toggle("selected", row.dataset.version === shownDiff));
    const lines = (v.diff || []).map((d) => `${d.path}: ${JSON.stringify(d.old)} -> ${JSON.stringify(d.new)}`);
    out.textContent = `version ${v.version} against the one before:\n` + (lines.join("\n") || "(no changes: the oldest version kept)");
    out.hidden = false;
  }

  async function revert(button) {
    const version = Number(button.dataset.version);
    const id = $("#versions").dataset.jobId;
    if (!window.confirm(`Revert job ${id} to version ${version}?`)) return;
    try {
      notice((await send("POST", `/jobs/${enc(id)}/revert`, { version })).message || "reverted");
    } catch (e) {
      notice(e.message, true);
    }
    loadFragment();
  }

  /* ---- allocation page: live logs ---------------------------------------- */

  const logs = { abort: null, offset: 0, key: "" };
  const LOG_LIMIT = 1 << 20; /* characters kept in the page */

  function syncLogTasks() {
    const select = $("#log-task");
    const names = $$("#tasks .task[data-task]").map((t) => t.dataset.task);
    const have = Array.from(select.options).map((o) => o.value);
    if (names.join("\n") !== have.join("\n")) {
      const keep = select.value;
      select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
      if (names.includes(keep)) select.value = keep;
    }
    if (!logs.abort && select.value) startLogs();
  }

  function appendLog(text) {
    const pre = $("#log");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.append(document.createTextNode(text));
    if (pre.textContent.length > LOG_LIMIT) pre.textContent = pre.textContent.slice(-LOG_LIMIT / 2);
    if ($("#log-follow").checked && (atBottom || !pre.dataset.scrolled)) pre.scrollTop = pre.scrollHeight;
  }

  function logState(text) { $("#log-state").textContent = text; }

  function startLogs() {
    if (logs.abort) logs.abort.abort();
    logs.abort = new AbortController();
    logs.offset = 0;
    $("#log").textContent = "";
    followLogs(logs.abort.signal);
  }

  async function followLogs(signal) {
    const alloc = document.body.dataset.allocId;
    const task = $("#log-task").value;
    const type = $("#log-type").value;
    let delay = 500;
    while (!signal.aborted) {
      const follow = $("#log-follow").checked;
      logState(follow ? "following" : "loading");
      try {
        const url = `${BASE}/logs/${enc(alloc)}/${enc(task)}?type=${type}&offset=${logs.offset}&follow=${follow ? 1 : 0}`;
        const resp = await call(url, { signal, headers: { Accept: "text/event-stream" } });
        if (resp.status === 404) {
          const message = await errorOf(resp);
          if (!message.startsWith("no route")) { logState(message); return; }
          if (await pollLogs(alloc, task, type, signal)) return; /* a server without log streams */
          continue;
        }
        if (!resp.ok) throw new Error(await errorOf(resp));
        let ended = false;
        await readEvents(resp.body, (name, data) => {
          const msg = JSON.parse(data);
          if (name === "log") { appendLog(msg.text || ""); logs.offset = msg.offset; }
          else if (name === "end") ended = true;
          else if (name === "error") logState(msg.error || "log error");
        });
        delay = 500;
        if (ended || !follow) { logState(ended ? "end of log" : "not following"); return; }
      } catch (e) {
        if (signal.aborted) return;
        logState("log stream interrupted: " + e.message + "; retrying");
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 8000);
    }
  }

  /* Fallback: page through the JSON API's log relay; true once done. */
  async function pollLogs(alloc, task, type, signal) {
    const resp = await call(`${API}/allocations/${enc(alloc)}/logs/${enc(task)}?type=${type}&offset=${logs.offset}`, { signal });
    if (!resp.ok) { logState(await errorOf(resp)); return true; }
    const text = await resp.text();
    if (text) appendLog(text);
    logs.offset = Number(resp.headers.get("X-Orch-Next-Offset")) || logs.offset + text.length;
    if (!$("#log-follow").checked) { logState("not following"); return true; }
    await sleep(1000);
    return false;
  }

  if (PAGE === "alloc") {
    ["#log-task", "#log-type", "#log-follow"].forEach((sel) => $(sel).addEventListener("change", startLogs));
    $("#log").addEventListener("scroll", () => { $("#log").dataset.scrolled = "1"; });
  }

  /* ---- run page -------------------------------------------------------- */

  function specBody() {
    const raw = $("#job-spec").value;
    try {
      JSON.parse(raw);
    } catch (e) {
      throw new Error("the job file is not valid JSON: " + e.message);
    }
    return raw;
  }

  function renderPlan(plan) {
    const out = $("#plan-output");
    out.replaceChildren(el("h2", {}, `Plan for ${plan.job_id}` + (plan.exists ? ` (version ${plan.current_version} -> ${plan.version})` : " (new job)")));
    const list = el("ul");
    Object.entries(plan.diff || {}).forEach(([group, d]) => {
      list.append(el("li", {}, `group ${group}: place ${d.place}, replace ${d.replace}, stop ${d.stop}, keep ${d.keep} (count ${d.scale})`));
    });
    Object.entries(plan.failures || {}).forEach(([group, f]) => {
      const item = el("li", { class: "plan-failure" }, `group ${group}: ${f.wanted} allocation(s) could not be placed`);
      const why = el("ul");
      Object.entries(f.failures || {}).forEach(([reason, n]) => {
        const verb = /^(constraint|distinct)/.test(reason) ? "filtered" : "on";
        why.append(el("li", {}, `${reason} ${verb} ${n} node${n === 1 ? "" : "s"}`));
      });
      (f.nodes || []).forEach((n) => why.append(el("li", {}, `nearest: node ${n.node_id} ${n.reason || ""}`)));
      item.append(why);
      list.append(item);
    });
    if (!list.children.length) list.append(el("li", {}, plan.changed ? "nothing to place" : "no change"));
    out.append(list);
  }

  async function runAction(kind) {
    const out = $("#plan-output");
    out.replaceChildren(el("p", { class: "loading" }, kind === "plan" ? "Planning" : "Submitting"));
    try {
      const body = specBody();
      if (kind === "plan") { renderPlan(await send("POST", "/jobs/plan", body)); return; }
      const answer = await send("POST", "/jobs", body);
      location.assign(`${BASE}/jobs/${enc(answer.job_id)}`);
    } catch (e) {
      out.replaceChildren(el("p", { class: "notice error" }, e.message));
    }
  }

  if (PAGE === "run") {
    $("#btn-plan").addEventListener("click", () => runAction("plan"));
    $("#btn-submit").addEventListener("click", () => runAction("submit"));
    $("#job-file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (file) $("#job-spec").value = await file.text();
    });
  }

  /* ---- start --------------------------------------------------------------- */

  if (FRAGMENT) {
    watch();
    /* The stream's hello loads the page; without one soon, load it anyway. */
    setTimeout(() => { if ($(".loading", main)) loadFragment(); }, 1500);
  }
})();
