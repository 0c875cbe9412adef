// airlock console: small enhancements only. Every page works without this
// file; it never loads anything and never sends a request of its own.
(function () {
  "use strict";

  // Filters apply as soon as a select changes; the Apply button stays for
  // keyboards and for browsers without JavaScript.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });

  // Copy buttons put a digest or reference on the clipboard.
  document.querySelectorAll("button[data-copy]").forEach(function (btn) {
    btn.hidden = false;
    btn.addEventListener("click", function () {
      if (!navigator.clipboard) { return; }
      navigator.clipboard.writeText(btn.getAttribute("data-copy")).then(function () {
        var label = btn.textContent;
        btn.textContent = "Copied";
        setTimeout(function () { btn.textContent = label; }, 1500);
      });
    });
  });

  // Focus the first field with an error, so keyboard and screen-reader
  // users land on what needs fixing.
  var invalid = document.querySelector("[aria-invalid=true]");
  if (invalid) { invalid.focus(); }
})();
