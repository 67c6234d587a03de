/// The status page `/` serves: one self-contained document (no external script, style or font: it works on a
/// host with no internet). It polls `/status` every two seconds and `/metrics` every five, and follows `/events`
/// (server-sent events) for the feed of what happens; nothing needs a reload.
enum StatusPage {
    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>botcluster</title>
    <style>
      :root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --dim: #6e7781; }
      body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; }
      h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
      .summary { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0 1rem; }
      .card { border: 1px solid #8884; border-radius: 6px; padding: .5rem .8rem; min-width: 9rem; }
      .card b { display: block; font-size: 1.2rem; }
      .card span { color: var(--dim); font-size: .8rem; }
      table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
      th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #8883; white-space: nowrap; }
      th { font-weight: 600; color: var(--dim); }
      td.num, th.num { text-align: right; }
      .state-ready { color: var(--ok); }
      .state-backoff, .state-failed { color: var(--bad); font-weight: 600; }
      .state-queued, .state-spawning, .state-connected, .state-identifying, .state-draining { color: var(--warn); }
      .layout { color: var(--dim); font-size: .8rem; }
      #feed { list-style: none; padding: 0; margin: 0; max-height: 18rem; overflow-y: auto; font-family: ui-monospace, monospace; font-size: .85rem; }
      #feed li { padding: .1rem 0; }
      #feed .kind { display: inline-block; min-width: 5.5rem; font-weight: 600; }
      .k-crash, .k-hang, .k-failed, .k-429 { color: var(--bad); }
      .k-resume, .k-ready { color: var(--ok); }
      .k-restart, .k-rescale, .k-rolling { color: var(--warn); }
      #conn { font-size: .8rem; color: var(--dim); }
      .columns { display: grid; grid-template-columns: minmax(0, 3fr) minmax(16rem, 2fr); gap: 1.5rem; }
      @media (max-width: 900px) { .columns { grid-template-columns: 1fr; } }
    </style>
    </head>
    <body>
    <h1>botcluster <span id="title"></span></h1>
    <div id="conn">connecting…</div>
    <div class="summary">
      <div class="card"><span>shards ready</span><b id="ready">–</b></div>
      <div class="card"><span>events / s</span><b id="rate">–</b></div>
      <div class="card"><span>session starts left today</span><b id="identify">–</b></div>
      <div class="card"><span>REST budget in use</span><b id="budget">–</b></div>
      <div class="card"><span>user cache hits</span><b id="cache">–</b></div>
      <div class="card"><span>supervisor up</span><b id="uptime">–</b></div>
      <div class="card"><span>events arrive by</span><b id="mode">–</b></div>
    </div>
    <div id="startup"></div>
    <div class="columns">
      <div>
        <table>
          <thead><tr><th>worker</th><th>shard</th><th>state</th><th class="num">pid</th><th class="num">up</th><th class="num">latency</th><th class="num">events/s</th><th class="num">restarts</th><th>last exit</th></tr></thead>
          <tbody id="workers"></tbody>
        </table>
      </div>
      <div>
        <h2 style="font-size:1rem;margin:0 0 .4rem">what happened</h2>
        <ul id="feed"></ul>
      </div>
    </div>
    <script>
    "use strict";
    const $ = (id) => document.getElementById(id);
    function human(seconds) {
      if (seconds == null) return "";
      if (seconds < 90) return Math.round(seconds) + " s";
      if (seconds < 5400) return Math.round(seconds / 60) + " min";
      if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
      return (seconds / 86400).toFixed(1) + " d";
    }
    function cell(row, text, cls) {
      const td = document.createElement("td");
      td.textContent = text == null ? "" : String(text);
      if (cls) td.className = cls;
      row.appendChild(td);
      return td;
    }
    function render(status) {
      $("conn").textContent = "live · updated " + new Date().toLocaleTimeString();
      $("title").textContent = "· supervisor pid " + status.supervisor.pid;
      const workers = status.workers;
      const ready = workers.filter((w) => w.state === "ready").length;
      $("ready").textContent = ready + " / " + workers.length;
      $("ready").dataset.ready = String(ready);
      $("ready").dataset.total = String(workers.length);
      const rate = workers.reduce((sum, w) => sum + (w.eventsPerSecond || 0), 0);
      $("rate").textContent = rate.toFixed(1);
      $("identify").textContent = status.identify.remainingToday + " (max_concurrency " + status.identify.maxConcurrency + ")";
      $("uptime").textContent = human(status.supervisor.uptimeSeconds);
      $("mode").textContent = status.webhook ? "webhook (" + status.webhook.queued + " not yet handled)" : "websocket";
      $("startup").textContent = status.startup ? "starting: ready " + status.startup.ready + "/" + status.startup.total + (status.startup.secondsLeft >= 1 ? " · about " + human(status.startup.secondsLeft) + " left" : "") : "";
      const body = document.createElement("tbody");
      body.id = "workers";
      for (const w of workers.concat(status.otherLayouts)) {
        const row = document.createElement("tr");
        row.dataset.ordinal = String(w.ordinal);
        row.dataset.state = w.state;
        row.dataset.restarts = String(w.restarts);
        row.dataset.pid = w.pid == null ? "" : String(w.pid);
        if (w.layout) row.dataset.layout = w.layout;
        cell(row, w.ordinal);
        const shard = cell(row, w.shard[0] + "/" + w.shard[1]);
        if (w.layout) { const tag = document.createElement("span"); tag.className = "layout"; tag.textContent = " " + w.layout; shard.appendChild(tag); }
        cell(row, w.state + (w.failure ? ": " + w.failure : ""), "state-" + w.state);
        cell(row, w.pid, "num");
        cell(row, human(w.uptimeSeconds), "num");
        cell(row, w.gatewayLatencyMs == null ? "" : w.gatewayLatencyMs + " ms", "num");
        cell(row, w.eventsPerSecond == null ? "" : w.eventsPerSecond, "num");
        cell(row, w.restarts, "num");
        cell(row, w.lastExit || "");
        body.appendChild(row);
      }
      $("workers").replaceWith(body);
    }
    function sample(text, name, labels) {
      let total = null;
      for (const line of text.split("\n")) {
        if (!line.startsWith(name)) continue;
        const rest = line.slice(name.length);
        if (rest[0] !== " " && rest[0] !== "{") continue;
        if (labels && !rest.includes(labels)) continue;
        total = (total || 0) + Number(line.slice(line.lastIndexOf(" ") + 1));
      }
      return total;
    }
    async function poll() {
      try {
        const response = await fetch("status", { cache: "no-store" });
        render(await response.json());
      } catch (error) {
        $("conn").textContent = "supervisor unreachable (" + error + "); retrying";
      }
    }
    async function pollMetrics() {
      try {
        const text = await (await fetch("metrics", { cache: "no-store" })).text();
        const used = sample(text, "botcluster_rest_budget_tokens_per_second");
        const limit = sample(text, "botcluster_rest_budget_limit_tokens_per_second");
        if (used != null && limit) $("budget").textContent = used.toFixed(1) + " / " + limit + " per s";
        const hits = sample(text, "botcluster_cache_lookups_total", 'result="hit"') || 0;
        const misses = sample(text, "botcluster_cache_lookups_total", 'result="miss"') || 0;
        $("cache").textContent = hits + misses > 0 ? Math.round(100 * hits / (hits + misses)) + " %" : "no lookups yet";
      } catch (error) {}
    }
    // A burst of events (a rescale, a storm of 429s) refreshes the table once.
    let refreshing = false;
    function soon() {
      if (refreshing) return;
      refreshing = true;
      setTimeout(() => { refreshing = false; poll(); }, 500);
    }
    function follow() {
      const feed = new EventSource("events");
      feed.onmessage = (message) => {
        const entry = JSON.parse(message.data);
        const item = document.createElement("li");
        item.dataset.kind = entry.kind;
        item.dataset.seq = String(entry.seq);
        const time = document.createElement("span");
        time.textContent = new Date(entry.time * 1000).toLocaleTimeString() + " ";
        const kind = document.createElement("span");
        kind.className = "kind k-" + entry.kind;
        kind.textContent = entry.kind;
        item.append(time, kind, document.createTextNode(entry.text));
        $("feed").prepend(item);
        while ($("feed").children.length > 200) $("feed").lastChild.remove();
        soon();
      };
    }
    poll();
    pollMetrics();
    follow();
    setInterval(poll, 2000);
    setInterval(pollMetrics, 5000);
    </script>
    </body>
    </html>
    """#
}
