// The staff nav's groups (<details> dropdowns) work without this; it adds what a menu is
// expected to do: Escape closes the open group (focus back on its name), and tabbing or
// clicking out of a group closes it.
(function () {
  "use strict";
  var groups = document.querySelectorAll("nav.top details.dropdown");
  groups.forEach(function (group) {
    group.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && group.open) {
        group.open = false;
        group.querySelector("summary").focus();
      }
    });
    group.addEventListener("focusout", function (event) {
      if (group.open && event.relatedTarget && !group.contains(event.relatedTarget)) group.open = false;
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    groups.forEach(function (group) { group.open = false; });
  });
})();
