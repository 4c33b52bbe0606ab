/* Chorus: progressive enhancement for the upload and feedback forms (no build, no CDN).
 *
 * Without this file every form still works: the upload posts and redirects to its result, and
 * feedback posts and redirects back with one confirmation. With it: drag-and-drop, paste, a
 * preview, the phone camera and a size check before anything is sent; feedback is recorded in
 * place, "Send correction" stays disabled until a class is chosen, and focus moves to the
 * confirmation.
 */
(function () {
  "use strict";

  function megabytes(bytes) {
    return (bytes / 1048576).toFixed(1);
  }

  /* ---- upload ---------------------------------------------------------------------------- */

  function enhanceUpload(form) {
    var zone = form.querySelector("[data-drop-zone]");
    var input = form.querySelector("input[type=file][name=image]");
    if (!zone || !input) return;
    var camera = form.querySelector("input[data-camera]");
    var sizeError = zone.querySelector("[data-size-error]");
    var preview = zone.querySelector("[data-preview]");
    var previewImage = zone.querySelector("[data-preview-image]");
    var previewCaption = zone.querySelector("[data-preview-caption]");
    var maxBytes = parseInt(zone.getAttribute("data-max-bytes"), 10) || 0;
    var maxMb = zone.getAttribute("data-max-mb");

    Array.prototype.forEach.call(form.querySelectorAll(".js-only"), function (el) {
      el.hidden = false;
    });
    zone.classList.add("enhanced");

    function tooLarge(file) {
      return maxBytes > 0 && file.size > maxBytes;
    }

    function showSizeError(file) {
      sizeError.textContent =
        "The file is " + megabytes(file.size) + " MB; the limit is " + maxMb +
        " MB. Choose a smaller image (a photo of a few MB is plenty); nothing was sent.";
      sizeError.hidden = false;
    }

    function showPreview(file) {
      sizeError.hidden = true;
      sizeError.textContent = "";
      if (!/^image\//.test(file.type)) {
        preview.hidden = true;
        return;
      }
      var reader = new FileReader();
      reader.onload = function () {
        previewImage.src = reader.result; /* a data: URI, which the CSP allows */
        previewCaption.textContent = (file.name || "Pasted image") + " · " +
          megabytes(file.size) + " MB";
        preview.hidden = false;
      };
      reader.readAsDataURL(file);
    }

    function choose(file) {
      if (tooLarge(file)) {
        input.value = "";
        preview.hidden = true;
        showSizeError(file);
        return;
      }
      showPreview(file);
    }

    function useFiles(files) {
      if (!files || !files.length) return;
      var transfer = new DataTransfer();
      transfer.items.add(files[0]);
      input.files = transfer.files;
      choose(files[0]);
    }

    input.addEventListener("change", function () {
      if (input.files && input.files[0]) choose(input.files[0]);
      else preview.hidden = true;
    });
    if (camera) {
      camera.addEventListener("change", function () {
        useFiles(camera.files);
        camera.value = "";
      });
    }
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () {
        zone.classList.remove("dragging");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      useFiles(event.dataTransfer && event.dataTransfer.files);
    });
    document.addEventListener("paste", function (event) {
      var files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) {
        event.preventDefault();
        useFiles(files);
      }
    });
    form.addEventListener("submit", function (event) {
      var submitter = event.submitter;
      if (submitter && submitter.name === "sample") return; /* a gallery sample: no file */
      var file = input.files && input.files[0];
      if (file && tooLarge(file)) {
        event.preventDefault();
        showSizeError(file);
        sizeError.focus();
      }
    });
  }

  /* ---- feedback -------------------------------------------------------------------------- */

  function enhanceFeedback(card) {
    var form = card.querySelector("form[data-feedback]");
    if (!form) return;
    var select = form.querySelector("select[name=label]");
    var no = form.querySelector("[name=no]");
    function sync() {
      if (no && select) no.disabled = select.value === "";
    }
    if (select) select.addEventListener("change", sync);
    sync();

    form.addEventListener("submit", function (event) {
      if (!window.fetch || !window.DOMParser || form.dataset.plain) return; /* plain POST */
      event.preventDefault();
      var submitter = event.submitter;
      var data = new FormData(form);
      if (submitter && submitter.name) data.append(submitter.name, submitter.value);
      var buttons = form.querySelectorAll("button, input[type=submit]");
      Array.prototype.forEach.call(buttons, function (button) { button.disabled = true; });
      fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          var page = new DOMParser().parseFromString(html, "text/html");
          var fresh = page.querySelector("[data-feedback-card]");
          if (!fresh) throw new Error("no feedback card in the answer");
          card.innerHTML = fresh.innerHTML;
          enhanceFeedback(card);
          var status = card.querySelector("#feedback-status");
          if (status) status.focus();
        })
        .catch(function () { /* fall back to the page round trip */
          Array.prototype.forEach.call(buttons, function (button) { button.disabled = false; });
          form.dataset.plain = "1";
          form.requestSubmit(submitter || undefined);
        });
    });
  }

  /* ---- wide tables --------------------------------------------------------------------- */

  /* A table that scrolls sideways must be reachable from the keyboard: a scrolling wrapper
   * becomes a named, focusable region, and stops being one when everything fits again. */
  function markScrollers() {
    Array.prototype.forEach.call(document.querySelectorAll(".table-scroll"), function (box) {
      if (box.scrollWidth > box.clientWidth + 1) {
        var card = box.closest("section");
        var heading = card && card.querySelector("h2, h3");
        box.setAttribute("tabindex", "0");
        box.setAttribute("role", "region");
        box.setAttribute("aria-label", (heading ? heading.textContent.trim() : "Table") +
          " (scrolls sideways)");
      } else if (box.getAttribute("role") === "region") {
        box.removeAttribute("tabindex");
        box.removeAttribute("role");
        box.removeAttribute("aria-label");
      }
    });
  }

  function ready() {
    markScrollers();
    window.addEventListener("resize", markScrollers);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-upload-form]"), enhanceUpload);
    Array.prototype.forEach.call(document.querySelectorAll("[data-feedback-card]"), enhanceFeedback);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
