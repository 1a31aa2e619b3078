// "Insert image": puts an image's Markdown from the media library where the cursor is in
// the body. Without this script the buttons stay hidden and the Markdown is copied by hand.
(function () {
  "use strict";
  var body = document.getElementById("body_md");
  if (!body) return;
  Array.prototype.forEach.call(document.querySelectorAll("#insert-image button.insert"), function (button) {
    var field = document.getElementById(button.getAttribute("data-snippet"));
    if (!field) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var start = body.selectionStart, end = body.selectionEnd, text = body.value;
      // An image on a line of its own: Markdown then makes it a paragraph of its own.
      var before = start > 0 && text.charAt(start - 1) !== "\n" ? "\n\n" : "";
      var after = end < text.length && text.charAt(end) !== "\n" ? "\n\n" : "";
      body.focus();
      body.setRangeText(before + field.value + after, start, end, "end");
      body.dispatchEvent(new Event("input", { bubbles: true }));
    });
  });
})();

// The newsletter editor's live preview. Without this script the "Preview" button posts the
// form into the preview frame; with it, the preview follows the text a moment after typing
// stops. The email's HTML is loaded by posting the form into a fresh sandboxed frame (so it
// is served with its own sandbox policy and its inline styles apply); the subject, the text
// part and any template problem come from the same endpoint as JSON.
(function () {
  "use strict";
  var form = document.getElementById("editor");
  var button = document.getElementById("preview-button");
  var holder = document.getElementById("preview-holder");
  if (!form || !button || !holder) return;

  var url = button.getAttribute("formaction");
  var token = form.querySelector("input[name=csrf_token]").value;
  var status = document.getElementById("preview-status");
  var problem = document.getElementById("preview-error");
  var subjectLine = document.getElementById("preview-subject-line");
  var subject = document.getElementById("preview-subject");
  var textPart = document.getElementById("text-part");
  var text = document.getElementById("preview-text");
  var DELAY_MS = 500;
  var timer = null;
  var frames = 0;
  var pending = null;
  var latest = 0;

  button.value = "html"; // the text part is shown beside the frame, not inside it

  function refreshFrame() {
    // A new frame per refresh: its first navigation replaces its blank page, so previews
    // do not pile up in the browser's history, and the old one stays until the new loads.
    if (pending) pending.remove();
    var fresh = document.createElement("iframe");
    fresh.name = "preview-" + (++frames);
    fresh.className = "preview";
    fresh.title = "HTML preview";
    fresh.setAttribute("sandbox", "allow-popups allow-popups-to-escape-sandbox");
    fresh.hidden = true;
    holder.appendChild(fresh);
    pending = fresh;
    button.formTarget = fresh.name;
    form.requestSubmit(button);
    fresh.addEventListener("load", function () {
      if (pending !== fresh) return;
      pending = null;
      Array.prototype.forEach.call(holder.querySelectorAll("iframe"), function (old) {
        if (old !== fresh) old.remove();
      });
      fresh.hidden = false;
    });
  }

  function refreshText() {
    var request = ++latest;
    status.textContent = "updating…";
    fetch(url, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Accept": "application/json" }
    }).then(function (response) {
      return response.json();
    }).then(function (data) {
      if (request !== latest) return;
      if (data.error) {
        problem.textContent = data.error.message;
        problem.hidden = false;
        status.textContent = "";
        return;
      }
      problem.hidden = true;
      subject.textContent = data.subject;
      subjectLine.hidden = false;
      text.textContent = data.text;
      textPart.hidden = false;
      status.textContent = "up to date";
    }).catch(function () {
      if (request !== latest) return;
      status.textContent = "preview unavailable (are you still logged in?)";
    });
  }

  function refresh() {
    clearTimeout(timer);
    refreshFrame();
    refreshText();
  }

  function later() {
    clearTimeout(timer);
    status.textContent = "…";
    timer = setTimeout(refresh, DELAY_MS);
  }

  form.addEventListener("input", later);
  form.addEventListener("change", later);
  button.addEventListener("click", function (event) {
    event.preventDefault();
    refresh();
  });
  if (form.elements.subject.value || form.elements.body_md.value) refresh();
})();
