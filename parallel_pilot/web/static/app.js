/* Parallel Pilot dashboard: live updates (server-sent events) and the upload progress bar.
   Plain JavaScript, no build step; every page works without it. */
(function () {
  "use strict";

  var MAX_BACKOFF_MS = 30000;  // longest wait between reconnect attempts

  function setStatus(text, on) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.textContent = text;
    el.className = "live" + (text ? (on ? " on" : " off") : "");
  }

  /* Fill elements by id from a {id: html} map sent by the server. */
  function applyFragments(fragments) {
    Object.keys(fragments).forEach(function (id) {
      var el = document.getElementById(id);
      if (el && el.innerHTML !== fragments[id]) el.innerHTML = fragments[id];
    });
    document.documentElement.setAttribute("data-updated", String(Date.now()));
  }

  /* One EventSource per page; reconnects itself, and is re-made with backoff when the
     browser gives up (e.g. the coordinator was down for a while). */
  function follow(url) {
    var source = null, failures = 0, finished = false;

    function connect() {
      source = new EventSource(url);
      source.onopen = function () { failures = 0; setStatus("live", true); };
      source.addEventListener("fragments", function (e) {
        applyFragments(JSON.parse(e.data));
      });
      source.addEventListener("done", function () {
        finished = true; source.close(); setStatus("up to date", true);
      });
      source.addEventListener("gone", function (e) {
        finished = true; source.close();
        setStatus(JSON.parse(e.data).message || "not available", false);
      });
      source.onerror = function () {
        if (finished) return;
        setStatus("reconnecting…", false);
        if (source.readyState === EventSource.CLOSED) {
          failures += 1;
          var wait = Math.min(MAX_BACKOFF_MS, 1000 * Math.pow(2, Math.min(failures, 5)));
          setTimeout(connect, wait);
        }
      };
    }
    connect();
  }

  function humanSize(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  /* The submit form: send it with XHR to show upload progress, then follow the redirect
     to the job, or show the form again with its errors. */
  function bindUpload(form) {
    form.addEventListener("submit", function (event) {
      if (!window.FormData || !window.XMLHttpRequest) return;
      event.preventDefault();
      var data = new FormData(form);
      // a picked folder's files are sent under their paths in it (shots/shot.blend)
      var folder = form.querySelector("input[type=file][webkitdirectory]");
      if (folder && folder.files.length) {
        data.delete(folder.name);
        Array.prototype.forEach.call(folder.files, function (f) {
          data.append(folder.name, f, f.webkitRelativePath || f.name);
        });
      }
      var status = document.getElementById("upload-status");
      var bar = document.getElementById("upload-progress");
      var text = document.getElementById("upload-text");
      var button = document.getElementById("submit-button");
      var csrf = form.querySelector("input[name=csrf_token]");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf.value);
      status.hidden = false;
      button.disabled = true;
      text.textContent = "starting…";
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round(100 * e.loaded / e.total);
        bar.value = pct;
        bar.textContent = pct + "%";
        text.textContent = pct + "% · " + humanSize(e.loaded) + " of " + humanSize(e.total);
      };
      xhr.upload.onload = function () { bar.value = 100; text.textContent = "uploaded; checking…"; };
      xhr.onload = function () {
        var landed = new URL(xhr.responseURL || form.action, location.href);
        if (xhr.status < 300 && landed.pathname !== new URL(form.action, location.href).pathname) {
          location.assign(landed.href);
          return;
        }
        var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
        var main = doc.getElementById("main");
        if (main) {
          document.getElementById("main").innerHTML = main.innerHTML;
          document.title = doc.title;
          init();
          var first = document.querySelector("[aria-invalid=true]") || document.querySelector(".alert");
          if (first && first.focus) first.focus();
        } else {
          button.disabled = false;
          text.textContent = "the coordinator answered " + xhr.status;
        }
      };
      xhr.onerror = function () {
        button.disabled = false;
        text.textContent = "the upload failed (connection lost); try again";
      };
      xhr.send(data);
    });
  }

  function init() {
    var form = document.getElementById("submit-form");
    if (form && !form.dataset.bound) { form.dataset.bound = "1"; bindUpload(form); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.getElementById("main");
    if (main && main.dataset.events) follow(main.dataset.events);
    init();
  });
})();
