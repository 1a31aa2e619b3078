// The segment editor's live count: a moment after a rule changes, the form is posted to
// the count endpoint and the count, the rules in words and ten sample contacts are shown.
// Without this script the "Count" button does the same with a page load.
(function () {
  "use strict";
  var form = document.getElementById("segment-form");
  if (!form) return;
  var url = form.getAttribute("data-count-url");
  var token = form.querySelector("input[name=csrf_token]").value;
  var count = document.getElementById("segment-count");
  var noun = document.getElementById("segment-noun");
  var text = document.getElementById("segment-text");
  var sample = document.getElementById("segment-sample");
  var problem = document.getElementById("segment-problem");
  var timer = null;
  var latest = 0;

  function refresh() {
    var request = ++latest;
    text.textContent = "counting…";
    fetch(url, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Accept": "application/json" }
    }).then(function (response) { return response.json(); }).then(function (data) {
      if (request !== latest) return;
      if (data.error) {
        problem.textContent = data.error.message;
        problem.hidden = false;
        count.textContent = "—";
        if (noun) noun.textContent = "contacts";
        text.textContent = "";
        sample.replaceChildren();
        return;
      }
      problem.hidden = true;
      count.textContent = data.count.toLocaleString("en-GB");
      if (noun) noun.textContent = data.count === 1 ? "contact" : "contacts";
      text.textContent = data.text;
      sample.replaceChildren.apply(sample, data.sample.map(function (c) {
        var item = document.createElement("li");
        var link = document.createElement("a");
        link.href = c.url;
        link.textContent = c.email;
        item.appendChild(link);
        item.appendChild(document.createTextNode(" " + (c.name || "")));
        return item;
      }));
    }).catch(function () {
      if (request === latest) text.textContent = "count unavailable (are you still logged in?)";
    });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  }

  form.addEventListener("change", later);
  form.addEventListener("input", function (event) {
    if (event.target.tagName === "INPUT" && event.target.type === "text" && event.target.name !== "name") later();
  });
})();
