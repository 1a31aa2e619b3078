// Keeps a long operation's <progress> and figures up to date from its JSON endpoint
// ({status, value, max, finished, figures}), then reloads the page once to show the outcome.
// Without JavaScript the page refreshes itself (<noscript> meta refresh) or has a link.
(function () {
  "use strict";
  var box = document.querySelector("[data-progress-url]");
  if (!box) return;
  var url = box.getAttribute("data-progress-url");
  var bar = box.querySelector("progress");

  function showStatus(status) {
    if (!status) return;
    document.querySelectorAll("[data-status]").forEach(function (badge) {
      badge.textContent = status;
      badge.className = "status status-" + status;
    });
    if (status !== "queued") {
      document.querySelectorAll("[data-while-queued]").forEach(function (note) { note.remove(); });
    }
  }

  function show(state) {
    showStatus(state.status);
    if (bar && state.max) {
      bar.max = state.max;
      bar.value = Math.min(state.value, state.max);
    }
    Object.keys(state.figures || {}).forEach(function (key) {
      box.querySelectorAll('[data-figure="' + key + '"]').forEach(function (cell) {
        cell.textContent = state.figures[key];
      });
    });
    if (state.finished) {
      window.location.reload();
    } else {
      setTimeout(poll, 1500);
    }
  }

  function poll() {
    fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.json();
      })
      .then(show)
      .catch(function () { setTimeout(poll, 5000); });
  }

  setTimeout(poll, 1000);
})();
