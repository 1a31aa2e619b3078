// Two-step signup without a page load between the steps; the form works without this file.
(function () {
  var form = document.getElementById("subscribe-form");
  if (!form) return;
  var tz = document.getElementById("timezone");
  try { if (!tz.value) tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
  var email = document.getElementById("email");
  var step1 = document.getElementById("step1");
  var step2 = document.getElementById("step2");
  var progress = document.getElementById("progress");
  var checkUrl = form.getAttribute("data-check-url");

  // The error above the form (the server's own, or one shown here); null clears it.
  function showError(message) {
    var box = document.getElementById("error");
    if (!message) { if (box) box.remove(); return; }
    if (!box) {
      box = document.createElement("p");
      box.id = "error";
      box.className = "error";
      box.setAttribute("role", "alert");
      form.parentNode.insertBefore(box, form);
    }
    box.textContent = message;
  }

  function toStep2() {
    showError(null);
    document.getElementById("email-shown").textContent = email.value;
    step1.hidden = true;
    step2.hidden = false;
    progress.textContent = "Step 2 of 2";
    document.getElementById("name").focus();
  }

  // The server checks the address by its own rules (the browser's are looser: "ann@clinic"
  // passes them) before step 2, so nobody loses a typed name and a tick to a late error.
  // If the check cannot be reached, step 2 opens and the final submit checks as usual.
  var next = document.getElementById("next");
  next.addEventListener("click", function (event) {
    event.preventDefault();
    email.value = email.value.trim();
    if (!email.value || !email.checkValidity()) {
      showError(null);
      email.setCustomValidity("Please enter a valid email address.");
      email.reportValidity();
      email.setCustomValidity("");
      return;
    }
    if (!checkUrl || !window.fetch) { toStep2(); return; }
    next.disabled = true;
    var body = new URLSearchParams();
    body.set("email", email.value);
    fetch(checkUrl, {method: "POST", body: body, headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        return response.json().then(function (data) { return {ok: response.ok, data: data}; });
      })
      .then(function (answer) {
        if (answer.ok) {
          email.value = answer.data.email;
          toStep2();
        } else if (answer.data && answer.data.error) {
          showError(answer.data.error.message);
          email.setAttribute("aria-invalid", "true");
          email.focus();
        } else {
          toStep2();
        }
      })
      .catch(toStep2)
      .then(function () { next.disabled = false; });
  });
  email.addEventListener("input", function () { email.removeAttribute("aria-invalid"); });
  document.getElementById("change").addEventListener("click", function (event) {
    event.preventDefault();
    step2.hidden = true;
    step1.hidden = false;
    progress.textContent = "Step 1 of 2";
    email.focus();
  });
  form.addEventListener("submit", function (event) {
    var consent = document.getElementById("consent");
    if (!step2.hidden && consent && !consent.checked) {
      event.preventDefault();
      consent.setCustomValidity("Please tick the box to agree.");
      consent.reportValidity();
      consent.setCustomValidity("");
    }
  });
})();
