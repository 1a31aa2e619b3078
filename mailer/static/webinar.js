// Show webinar times in the visitor's own time zone, and send that zone with the form.
(function () {
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
  var field = document.getElementById("timezone");
  if (field && !field.value) field.value = zone;
  function local(iso) {
    return new Intl.DateTimeFormat(undefined, {
      weekday: "long", day: "numeric", month: "long", year: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short"
    }).format(new Date(iso));
  }
  var when = document.getElementById("local-when");
  if (when) {
    try { when.textContent = local(when.getAttribute("data-start")) + " (your time)"; } catch (e) {}
  }
  var times = document.querySelectorAll("time.local-time");
  for (var i = 0; i < times.length; i++) {
    try { times[i].textContent = local(times[i].getAttribute("datetime")); } catch (e) {}
  }
})();
