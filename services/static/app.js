/* jobyard dashboard: keeps pages current without reloads. Plain JavaScript, no build step.
 *
 * Everything the server sends is put into the page as text (textContent), never as HTML, and
 * status classes are accepted only in the "status-<word>" shape: job names, arguments and log
 * lines are user data.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var STATUS_CLASS = /^status-[a-z_]+$/;
  var MAX_LOG_LINES = 20000; // keep a long-running log from growing the page without bound

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setBadge(node, cls, text) {
    if (!node) return;
    var kept = node.className.split(/\s+/).filter(function (c) { return c && c.indexOf("status-") !== 0; });
    if (STATUS_CLASS.test(cls)) kept.push(cls);
    node.className = kept.join(" ");
    node.textContent = text;
  }

  function badge(cls, text) {
    var node = el("span", "badge");
    setBadge(node, cls, text);
    return node;
  }

  function setText(root, selector, text) {
    var node = root.querySelector(selector);
    if (node && node.textContent !== String(text)) node.textContent = String(text);
  }

  /* Poll a JSON view every POLL_MS while the tab is visible; 401 means the session ended. */
  function poller(url, apply) {
    var timer = null;
    var busy = false;
    var stopped = false;
    function schedule() { if (!stopped) timer = window.setTimeout(tick, POLL_MS); }
    function tick() {
      timer = null;
      if (stopped || busy) return;
      if (document.hidden) { schedule(); return; }
      busy = true;
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (resp) {
          if (resp.status === 401) { stopped = true; window.location.reload(); return null; }
          return resp.ok ? resp.json() : null;
        })
        .then(function (data) { if (data && apply(data) === false) stopped = true; })
        .catch(function () { /* a network blip: the next tick tries again */ })
        .then(function () { busy = false; schedule(); });
    }
    schedule();
    return {
      now: function () { if (timer !== null) { window.clearTimeout(timer); tick(); } },
      stop: function () { stopped = true; if (timer !== null) window.clearTimeout(timer); }
    };
  }

  /* -- jobs list ------------------------------------------------------------------------------ */
  function jobsTable(table) {
    poller(table.getAttribute("data-poll"), function (data) {
      (data.jobs || []).forEach(function (job) {
        var row = null;
        table.querySelectorAll("tr[data-job]").forEach(function (tr) {
          if (tr.getAttribute("data-job") === job.name) row = tr;
        });
        if (!row) return;
        setBadge(row.querySelector('[data-cell="status"]'), job.status_class, job.status_text);
        setText(row, '[data-cell="last_run"]', job.last_run);
        setText(row, '[data-cell="last_run_ago"]', job.last_run_ago);
        setText(row, '[data-cell="last_result"]', job.last_result);
        setText(row, '[data-cell="next_fire"]', job.next_fire);
        var link = row.querySelector('a[data-cell="last_run"]');
        if (link && job.last_run_url) link.setAttribute("href", job.last_run_url);
      });
    });
  }

  /* -- one job: status and the history page being shown ------------------------------------- */
  function historyRow(run) {
    var tr = el("tr");
    tr.setAttribute("data-run", run.id);
    var first = el("td");
    var link = el("a", "mono", run.id);
    link.setAttribute("href", run.url);
    first.appendChild(link);
    tr.appendChild(first);
    var status = el("td");
    status.appendChild(badge(run.status_class, run.status_text));
    tr.appendChild(status);
    [run.trigger, run.priority, run.started, run.duration, run.attempt].forEach(function (v) {
      tr.appendChild(el("td", "", v));
    });
    return tr;
  }

  function instanceRow(inst) {
    var tr = el("tr");
    tr.appendChild(el("td", "mono", inst.instance_id));
    tr.appendChild(el("td", "", inst.host || "—"));
    var status = el("td");
    status.appendChild(badge(inst.status_class, inst.status));
    tr.appendChild(status);
    [inst.pid, inst.started, inst.restarts, inst.next_start || "—"].forEach(function (v) {
      tr.appendChild(el("td", "", v));
    });
    var run = el("td");
    if (inst.run_id) {
      var link = el("a", "mono", inst.run_id);
      link.setAttribute("href", "/runs/" + inst.run_id);
      run.appendChild(link);
    } else {
      run.textContent = "—";
    }
    tr.appendChild(run);
    return tr;
  }

  function replaceRows(body, items, makeRow) {
    if (!body || !items.length) return; // keep the server's "nothing yet" row
    var rows = document.createDocumentFragment();
    items.forEach(function (item) { rows.appendChild(makeRow(item)); });
    body.replaceChildren(rows);
  }

  function jobPage(table) {
    var status = document.getElementById("job-status");
    poller(table.getAttribute("data-poll"), function (data) {
      setBadge(status, data.job.status_class, data.job.status_text);
      var range = document.getElementById("history-total");
      if (range && range.textContent !== data.range) range.textContent = data.range;
      replaceRows(document.getElementById("history-body"), data.runs, historyRow);
      replaceRows(document.getElementById("instances-body"), data.instances, instanceRow);
    });
  }

  /* -- one run: its facts, its buttons, and its log followed live --------------------------- */
  function runPage(root) {
    var headBadge = document.querySelector('.page-head [data-field="status"]');
    var watcher = poller(root.getAttribute("data-poll"), function (run) {
      setBadge(headBadge, run.status_class, run.status_text);
      ["attempt", "started", "ended", "duration", "exit_code", "worker", "error"].forEach(function (name) {
        setText(root, '[data-field="' + name + '"]', run[name]);
      });
      document.querySelectorAll('[data-if="error"]').forEach(function (node) { node.hidden = !run.error; });
      document.querySelectorAll("[data-when]").forEach(function (node) {
        var want = node.getAttribute("data-when");
        node.hidden = want === "active" ? run.terminal : !run.terminal;
      });
      if (run.terminal) {
        var dot = document.getElementById("log-live");
        if (dot) dot.hidden = true;
        return false; // a terminal run never changes again
      }
      return true;
    });
    followLog(function () { watcher.now(); });
  }

  function logLine(entry) {
    var kind = entry.stream === "ERR" ? "err" : entry.stream === "SYS" ? "sys" : "out";
    var line = el("div", "line s-" + kind);
    var t = String(entry.t || "");
    line.appendChild(el("span", "ts", t.slice(0, 10) + " " + t.slice(11, 19)));
    line.appendChild(el("span", "stream", kind));
    line.appendChild(el("span", "msg", entry.line));
    return line;
  }

  function followLog(onEnd) {
    var log = document.getElementById("log");
    if (!log) return;
    var follow = document.getElementById("log-follow");
    var empty = document.getElementById("log-empty");
    var filter = document.getElementById("log-filter");
    var toggle = document.getElementById("toggle-output");
    var panel = document.getElementById("log-panel");
    if (toggle && panel) {
      toggle.addEventListener("click", function () {
        panel.hidden = !panel.hidden;
        toggle.setAttribute("aria-expanded", String(!panel.hidden));
      });
    }
    if (filter) filter.addEventListener("change", function () { log.setAttribute("data-filter", filter.value); });
    if (follow && follow.checked) log.scrollTop = log.scrollHeight;
    if (log.getAttribute("data-live") !== "1" || !window.EventSource) return;

    var after = log.getAttribute("data-after") || "0-0";
    var source = new EventSource(log.getAttribute("data-stream") + "?after=" + encodeURIComponent(after));
    source.addEventListener("line", function (event) {
      var entry;
      try { entry = JSON.parse(event.data); } catch (e) { return; }
      log.appendChild(logLine(entry));
      while (log.childElementCount > MAX_LOG_LINES) log.removeChild(log.firstElementChild);
      if (empty) empty.hidden = true;
      if (follow && follow.checked) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", function () {
      source.close();
      onEnd();
    });
    source.addEventListener("error", function () {
      // The browser reconnects by itself (resuming from the last line); a closed stream means
      // the server refused it (session ended) and the status poller takes over.
      if (source.readyState === EventSource.CLOSED) onEnd();
    });
  }

  /* -- cluster -------------------------------------------------------------------------------- */
  function workerRow(w) {
    var tr = el("tr");
    tr.appendChild(el("td", "mono", w.instance_id));
    tr.appendChild(el("td", "", w.host));
    tr.appendChild(el("td", "mono", w.pid));
    var slots = el("td");
    var bar = el("progress");
    bar.max = Math.max(1, w.slots);
    bar.value = w.busy;
    slots.appendChild(bar);
    slots.appendChild(document.createTextNode(" "));
    slots.appendChild(el("span", "mono", w.busy + " / " + w.slots));
    tr.appendChild(slots);
    tr.appendChild(el("td", "", w.last_seen));
    tr.appendChild(el("td", "", w.started));
    return tr;
  }

  function clusterPage(root) {
    var body = document.getElementById("workers-body");
    poller(root.getAttribute("data-poll"), function (data) {
      Object.keys(data.queues).forEach(function (level) {
        setText(root, '[data-queue="' + level + '"]', data.queues[level]);
      });
      ["dead_letters", "leader", "term", "since"].forEach(function (name) {
        setText(root, '[data-field="' + name + '"]', data[name]);
      });
      setText(root, '[data-field="worker_count"]', data.workers.length);
      replaceRows(body, data.workers, workerRow);
    });
  }

  /* -- everywhere ----------------------------------------------------------------------------- */
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-toggle]");
    if (!button) return;
    var target = document.getElementById(button.getAttribute("data-toggle"));
    if (!target) return;
    target.hidden = !target.hidden;
    button.setAttribute("aria-expanded", String(!target.hidden));
  });

  document.addEventListener("DOMContentLoaded", function () {
    var kinds = { jobs: jobsTable, job: jobPage, run: runPage, cluster: clusterPage };
    document.querySelectorAll("[data-poll-kind]").forEach(function (node) {
      var start = kinds[node.getAttribute("data-poll-kind")];
      if (!start) return;
      if (node.getAttribute("data-poll-kind") === "run" && node.getAttribute("data-terminal") === "1") {
        followLog(function () {});
        return;
      }
      start(node);
    });
  });
})();
