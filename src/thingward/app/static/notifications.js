/* thingward live notifications: the recent list, then server-sent events from /api/v1/notifications/stream.
   Each notification shows the snapshot with the changed region outlined by the server, and the same region
   marked over it here (positioned in percent of the image, so it follows the image's size).
   No inline script, no inline style attribute: styles are set through the CSSOM, which the CSP allows. */
(function () {
  "use strict";
  var root = document.getElementById("tw-notifications");
  if (!root) { return; }
  var list = root.querySelector(".tw-list");
  var status = root.querySelector(".tw-status");
  var empty = root.querySelector(".tw-empty");
  var shown = {};
  var KEEP = 20;

  function setStatus(state, text) {
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function percent(part, whole) {
    return (100 * part / whole).toFixed(3) + "%";
  }

  function render(n, live) {
    if (shown[n.id]) { return; }
    shown[n.id] = true;
    var item = document.createElement("li");
    item.className = "tw-notification" + (live ? " tw-new" : "");
    item.setAttribute("data-id", String(n.id));
    item.setAttribute("data-thing", n.thing);
    item.setAttribute("data-event-type", n.event_type);
    var figure = document.createElement("figure");
    figure.className = "tw-figure";
    if (n.annotated_url || n.snapshot_url) {
      var frame = document.createElement("div");
      frame.className = "tw-frame";
      var img = document.createElement("img");
      img.className = "tw-snapshot";
      img.src = n.annotated_url || n.snapshot_url;
      img.alt = "Snapshot from " + n.thing + (n.region ? ", the changed region outlined" : "");
      img.loading = "lazy";
      frame.appendChild(img);
      if (n.region && n.image && n.image.width && n.image.height) {
        var box = document.createElement("div");
        box.className = "tw-region";
        box.setAttribute("data-region", [n.region.x, n.region.y, n.region.width, n.region.height].join(","));
        box.title = "changed region";
        box.style.left = percent(n.region.x, n.image.width);
        box.style.top = percent(n.region.y, n.image.height);
        box.style.width = percent(n.region.width, n.image.width);
        box.style.height = percent(n.region.height, n.image.height);
        frame.appendChild(box);
      }
      figure.appendChild(frame);
    }
    var caption = document.createElement("figcaption");
    var message = document.createElement("strong");
    message.textContent = n.message;
    var when = document.createElement("time");
    when.dateTime = n.created_at;
    when.textContent = new Date(n.created_at).toLocaleString();
    caption.appendChild(message);
    caption.appendChild(document.createTextNode(" "));
    caption.appendChild(when);
    figure.appendChild(caption);
    item.appendChild(figure);
    list.insertBefore(item, list.firstChild);
    while (list.children.length > KEEP) { list.removeChild(list.lastChild); }
    empty.hidden = true;
  }

  fetch(root.getAttribute("data-list") + "?limit=10", { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (response) { return response.ok ? response.json() : { notifications: [] }; })
    .then(function (body) { body.notifications.slice().reverse().forEach(function (n) { render(n, false); }); })
    .catch(function () { /* the stream below still works */ });

  // Preferences: one checkbox per device and event type; a change is saved at once (with the CSRF token
  // the page carries), and put back if the server refuses it.
  var prefs = root.querySelector(".tw-prefs");
  var prefsList = prefs.querySelector(".tw-prefs-list");
  var prefsError = prefs.querySelector(".tw-prefs-error");
  var prefsUrl = prefs.getAttribute("data-preferences");
  var csrfMeta = document.querySelector("meta[name='csrf-token']");

  function savePreference(box, pref) {
    prefsError.hidden = true;
    var headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (csrfMeta) { headers["X-CSRF-Token"] = csrfMeta.getAttribute("content"); }
    var wanted = { thing: pref.thing, event_type: pref.event_type, enabled: box.checked };
    fetch(prefsUrl, { method: "PUT", credentials: "same-origin", headers: headers, body: JSON.stringify({ preferences: [wanted] }) })
      .then(function (response) {
        if (!response.ok) {
          return response.json().catch(function () { return {}; }).then(function (body) {
            throw new Error(body.error || body.detail || ("the server answered " + response.status));
          });
        }
        box.setAttribute("data-saved", String(box.checked));
      })
      .catch(function (error) {
        box.checked = !box.checked;
        prefsError.textContent = "Not saved: " + error.message;
        prefsError.hidden = false;
      });
  }

  function renderPreferences(list) {
    prefsList.textContent = "";
    prefs.querySelector(".tw-prefs-empty").hidden = list.length > 0;
    list.forEach(function (pref) {
      var item = document.createElement("li");
      var label = document.createElement("label");
      var box = document.createElement("input");
      box.type = "checkbox";
      box.checked = pref.enabled;
      box.name = pref.thing + ":" + pref.event_type;
      box.setAttribute("data-thing", pref.thing);
      box.setAttribute("data-event-type", pref.event_type);
      box.addEventListener("change", function () { savePreference(box, pref); });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + pref.event_type + " on " + pref.thing));
      item.appendChild(label);
      prefsList.appendChild(item);
    });
  }

  fetch(prefsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (response) { return response.ok ? response.json() : { preferences: [] }; })
    .then(function (body) { renderPreferences(body.preferences); })
    .catch(function () { /* the notifications still work */ });

  if (!window.EventSource) { setStatus("off", "live updates need a newer browser"); return; }
  var source = new EventSource(root.getAttribute("data-stream"));
  source.addEventListener("open", function () { setStatus("live", "live"); });
  source.addEventListener("error", function () {
    setStatus("reconnecting", source.readyState === EventSource.CLOSED ? "offline: reload the page" : "reconnecting");
  });
  source.addEventListener("notification", function (event) {
    try { render(JSON.parse(event.data), true); } catch (e) { /* a malformed event is skipped */ }
  });
}());
