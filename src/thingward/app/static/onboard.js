// thingward: the "Add a device" page. The label's secret code stays in this browser: only the device id
// goes into the form. After the claim is minted, the page follows it (bounded polling, session cookie).
"use strict";

(function () {
  const LABEL = /^TW1:([a-z0-9_-]{1,64}):([A-Za-z2-7 -]+)$/i;
  const POLL_MS = 2000;
  const MAX_POLLS = 600; // 20 minutes at most, whatever the claim's expiry says

  function parseLabel(text) {
    const match = LABEL.exec(text.trim());
    if (!match) return null;
    const code = match[2].replace(/[ -]/g, "").toUpperCase();
    if (code.length !== 16) return { error: "the label's code has " + code.length + " characters, not 16: check it against the label" };
    if (!/^[a-z0-9_-]{1,64}$/.test(match[1])) return { error: "the device id must be lowercase letters, digits, '-' or '_'" };
    return { deviceId: match[1] };
  }

  function labelForm() {
    const label = document.getElementById("label-code");
    const deviceId = document.getElementById("device-id");
    const feedback = document.getElementById("label-feedback");
    const form = document.getElementById("add-device");
    if (!label || !deviceId || !feedback || !form) return;

    function say(text, ok) {
      feedback.textContent = text;
      feedback.classList.toggle("ok", ok);
      feedback.classList.toggle("error", !ok && text !== "");
    }

    function take(text) {
      if (!text.trim()) { say("", false); return; }
      const parsed = parseLabel(text);
      if (parsed === null) { say("not a thingward label: expected TW1:<device id>:<code> as printed on the device", false); return; }
      if (parsed.error) { say(parsed.error, false); return; }
      deviceId.value = parsed.deviceId;
      say("device " + parsed.deviceId + ": only this id is sent, the code stays here", true);
    }

    label.addEventListener("input", function () { take(label.value); });
    // A whole label pasted into the device id box moves to the label box: the code is never submitted.
    deviceId.addEventListener("input", function () {
      if (deviceId.value.indexOf(":") === -1) return;
      label.value = deviceId.value;
      deviceId.value = "";
      take(label.value);
    });
    form.addEventListener("submit", function (event) {
      if (deviceId.value.indexOf(":") !== -1) {
        event.preventDefault();
        say("only the device id is sent: paste the label into the label box", false);
      }
    });
  }

  function followClaim() {
    const claim = document.getElementById("claim");
    const status = document.getElementById("claim-status");
    if (!claim || !status) return;
    const id = claim.getAttribute("data-claim-id");
    let polls = 0;

    function show(text, className, link) {
      status.textContent = text;
      status.className = className;
      if (link) {
        status.append(" ");
        const a = document.createElement("a");
        a.href = link.href;
        a.textContent = link.text;
        status.append(a);
      }
    }

    async function poll() {
      polls += 1;
      let body = null;
      try {
        const response = await fetch("/api/v1/claims/" + encodeURIComponent(id), { credentials: "same-origin" });
        if (response.status === 401 || response.status === 404) {
          show("This page can no longer follow the claim (signed out?): sign in and check your devices.", "warn",
               { href: "/devices", text: "Your devices" });
          return;
        }
        if (response.ok) body = await response.json();
      } catch (e) {
        body = null;
      }
      if (body && body.state === "enrolled") {
        show("Enrolled: " + body.thing + " is now yours.", "ok",
             { href: "/devices/" + encodeURIComponent(body.thing), text: "Open " + body.thing });
        return;
      }
      if (body && body.state === "expired") {
        show("Expired: the device did not enroll in time. Start again.", "error", { href: "/devices/add", text: "Add the device" });
        return;
      }
      if (polls >= MAX_POLLS) {
        show("Stopped waiting: reload this page to check again.", "warn", null);
        return;
      }
      show(body ? "Waiting for the device…" : "Waiting for the device… (the server did not answer; retrying)", "", null);
      setTimeout(poll, POLL_MS);
    }

    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    labelForm();
    followClaim();
  });
})();
