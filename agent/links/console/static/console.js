// Pi Edge Agent console: live updates over Server-Sent Events and controls
// through the JSON API. The pages work without this file (values as of the
// page load, controls as plain forms).
"use strict";
(function () {
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  if (!csrf) { return; } // the login page
  var live = document.getElementById("live");

  function text(value) {
    if (value === null || value === undefined) { return "\u2014"; }
    if (typeof value === "number") { return String(Number(value.toPrecision(6))); }
    if (Array.isArray(value)) { return value.map(text).join(", "); }
    return String(value);
  }

  function when(ts) {
    if (!ts) { return ""; }
    var d = new Date(ts * 1000);
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function drawSpark(svg, points) {
    var line = svg.querySelector("polyline");
    var w = 120, h = 28;
    var values = points.map(function (p) { return p[1]; });
    if (!values.length) { line.setAttribute("points", ""); return; }
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    var span = (hi - lo) || 1, n = values.length;
    var pts = values.map(function (v, i) {
      var x = n > 1 ? i * w / (n - 1) : w;
      var y = h - 1 - (v - lo) / span * (h - 2);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    if (n === 1) { pts = ["0," + h / 2, w + "," + h / 2]; }
    line.setAttribute("points", pts.join(" "));
  }

  // each row's history as the page brought it, [bucket start, mean, count]; live
  // values are folded in the way the agent folds them (one mean per step, the
  // window kept), so the sparkline keeps showing the whole window
  var table = document.getElementById("sensors");
  var step = table ? Number(table.getAttribute("data-step")) || 300 : 300;
  var windowS = table ? Number(table.getAttribute("data-window")) || 86400 : 86400;
  var sparks = {};
  Array.prototype.forEach.call(document.querySelectorAll("tr.sensor"), function (row) {
    var svg = row.querySelector("svg");
    var points = [];
    try { points = JSON.parse(svg.getAttribute("data-points") || "[]"); } catch (e) { points = []; }
    sparks[row.getAttribute("data-key")] = { svg: svg, points: points };
  });

  function fold(s, ts, v) {
    var start = Math.floor(ts / step) * step;
    var last = s.points.length ? s.points[s.points.length - 1] : null;
    if (last && start <= last[0]) {
      last[1] = (last[1] * last[2] + v) / (last[2] + 1);
      last[2] += 1;
    } else {
      s.points.push([start, v, 1]);
      while (s.points.length && s.points[0][0] < start - windowS) { s.points.shift(); }
    }
  }

  function setStatus(row, status, reason) {
    row.className = "sensor status-" + status;
    row.querySelector(".badge").textContent = status;
    row.querySelector(".reason").textContent = reason || "";
  }

  function onReading(data) {
    var row = document.querySelector('tr.sensor[data-key="' + CSS.escape(data.key) + '"]');
    if (!row) { return; }
    row.querySelector(".v").textContent = text(data.value);
    row.querySelector("td.ts").textContent = when(data.ts);
    if (data.value === null) { setStatus(row, "unavailable", "the sensor gave no value"); }
    else if (row.classList.contains("status-unavailable")) { setStatus(row, "ok", ""); }
    var s = sparks[data.key];
    var v = typeof data.value === "boolean" ? (data.value ? 1 : 0) : data.value;
    if (s && typeof v === "number" && isFinite(v)) {
      fold(s, data.ts, v);
      drawSpark(s.svg, s.points);
    }
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (r.status === 401) { location.href = "/login"; } return r.json(); });
  }

  function renderActuator(a) {
    var card = document.getElementById("actuator-" + a.id);
    if (!card) { return; }
    card.querySelector(".state .text").textContent = a.text;
    var ul = card.querySelector(".in-force");
    ul.textContent = "";
    if (!a.in_force.length) {
      var none = document.createElement("li"); none.className = "none"; none.textContent = "no rule in force";
      ul.appendChild(none);
    }
    a.in_force.forEach(function (t) {
      var li = document.createElement("li"); li.textContent = t; ul.appendChild(li);
    });
  }

  var actuatorTimer = null;
  function refreshActuators() {
    if (actuatorTimer) { return; }
    actuatorTimer = setTimeout(function () {
      actuatorTimer = null;
      getJSON("/api/v1/actuators").then(function (list) { list.forEach(renderActuator); });
    }, 100);
  }

  function refreshCommands() {
    var body = document.querySelector("#commands tbody");
    if (!body) { return; }
    getJSON("/api/v1/commands").then(function (list) {
      body.textContent = "";
      list.forEach(function (c) {
        var tr = document.createElement("tr");
        tr.className = "result-" + c.result;
        [when(c.at), c.user, c.actuator, text(c.value), c.result, c.reason].forEach(function (t) {
          var td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
        });
        body.appendChild(tr);
      });
    });
  }

  function refreshSensors() {
    if (!document.getElementById("sensors")) { return; }
    getJSON("/api/v1/sensors?history=0").then(function (list) {
      list.forEach(function (s) {
        var row = document.querySelector('tr.sensor[data-key="' + CSS.escape(s.key) + '"]');
        if (row) { setStatus(row, s.status, s.reason); }
      });
    });
  }

  // controls: through the API, the outcome shown on the card
  Array.prototype.forEach.call(document.querySelectorAll("form.control"), function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var button = ev.submitter;
      var input = form.querySelector('input[name="value"]');
      var value = button && button.name === "value" ? button.value : (input ? input.value : "");
      var out = form.parentNode.querySelector(".outcome");
      out.className = "outcome";
      out.textContent = "\u2026";
      fetch("/api/v1/commands", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ actuator: form.getAttribute("data-actuator"), value: value })
      }).then(function (r) { return r.json(); }).then(function (o) {
        if (o.error) { out.className = "outcome refused"; out.textContent = o.error; return; }
        out.className = "outcome " + o.result;
        out.textContent = o.result + (o.reason ? ": " + o.reason : "") + (o.state ? " (now " + o.state + ")" : "");
        refreshActuators();
        refreshCommands();
      }).catch(function (e) { out.className = "outcome failed"; out.textContent = String(e); });
    });
  });

  if (!window.EventSource) { return; }
  var source = new EventSource("/api/v1/events");
  source.onopen = function () { live.textContent = "live"; live.className = "live on"; };
  source.onerror = function () { live.textContent = "reconnecting\u2026"; live.className = "live off"; };
  source.addEventListener("reading", function (e) { onReading(JSON.parse(e.data)); });
  source.addEventListener("state", function () { refreshActuators(); });
  source.addEventListener("command", function () { refreshCommands(); });
  source.addEventListener("reload", function () { location.reload(); });
  setInterval(refreshSensors, 10000);
  setInterval(refreshActuators, 5000);
})();
