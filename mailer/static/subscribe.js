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
  document.getElementById("next").addEventListener("click", function (event) {
    event.preventDefault();
    email.value = email.value.trim();
    if (!email.value || !email.checkValidity()) {
      email.setCustomValidity("Please enter a valid email address.");
      email.reportValidity();
      email.setCustomValidity("");
      return;
    }
    document.getElementById("email-shown").textContent = email.value;
    step1.hidden = true;
    step2.hidden = false;
    progress.textContent = "Step 2 of 2";
    document.getElementById("name").focus();
  });
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
