// thingward: the little script the pages use (no inline script anywhere: the CSP forbids it).
// Live password feedback: the server's own verdict while the person types.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function contextOf(form, name) {
    const field = form ? form.querySelector('[data-context="' + name + '"]') : null;
    return field ? field.value : "";
  }

  function show(box, verdict) {
    box.textContent = "";
    box.classList.toggle("ok", verdict.ok);
    if (verdict.ok) {
      box.append("Strong enough.");
      return;
    }
    const list = document.createElement("ul");
    for (const problem of verdict.problems) {
      const item = document.createElement("li");
      item.textContent = problem;
      list.append(item);
    }
    box.append(list);
  }

  function watch(input) {
    const box = document.querySelector('[data-feedback-for="' + input.name + '"]');
    if (!box) return;
    let timer = null;
    let asked = 0;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      if (!input.value) { box.textContent = ""; box.classList.remove("ok"); return; }
      timer = setTimeout(async function () {
        const mine = ++asked;
        const headers = { "Content-Type": "application/json" };
        if (csrf) headers["X-CSRF-Token"] = csrf;
        try {
          const answer = await fetch("/api/v1/password/check", {
            method: "POST",
            headers: headers,
            credentials: "same-origin",
            body: JSON.stringify({
              password: input.value,
              email: contextOf(input.form, "email"),
              name: contextOf(input.form, "name"),
            }),
          });
          if (answer.ok && mine === asked) show(box, await answer.json());
        } catch (e) {
          box.textContent = "";
        }
      }, 250);
    });
  }

  document.querySelectorAll("input[data-password-feedback]").forEach(watch);
})();
