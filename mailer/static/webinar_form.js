// The webinar form: the address (slug) follows the title until staff type one themselves.
(function () {
  var title = document.getElementById("title");
  var slug = document.getElementById("slug");
  if (!title || !slug || !slug.hasAttribute("data-from-title")) return;
  function slugify(text) {
    return text.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase()
      .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 100).replace(/-+$/, "");
  }
  title.addEventListener("input", function () {
    if (slug.hasAttribute("data-from-title")) slug.value = slugify(title.value);
  });
  slug.addEventListener("input", function () { slug.removeAttribute("data-from-title"); });
})();
