// cpis-relay browser view: the only script. No inline script is allowed
// (Content-Security-Policy), so everything the pages do beyond plain HTML
// forms is here: focus on an error summary, and live access notifications.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var summary = document.querySelector(".error-summary");
  if (summary) {
    summary.focus();
  }

  var list = document.getElementById("notifications");
  if (!list || !window.EventSource) {
    return;
  }
  var status = document.getElementById("live-status");
  var backlog = document.getElementById("backlog");
  var oldest = document.getElementById("oldest");
  var source = new EventSource(list.getAttribute("data-events"));
  source.addEventListener("notification", function (event) {
    // Server-rendered, escaped markup of one notification.
    var holder = document.createElement("template");
    holder.innerHTML = event.data;
    var row = holder.content.firstElementChild;
    if (!row || document.getElementById(row.id)) {
      return;
    }
    list.insertBefore(row, list.firstElementChild);
    var empty = document.getElementById("empty");
    if (empty) {
      empty.remove();
    }
    if (backlog) {
      backlog.textContent = String(Number(backlog.textContent) + 1);
    }
    if (oldest && oldest.getAttribute("data-none") === "true") {
      oldest.textContent = "just now";
      oldest.setAttribute("data-none", "false");
    }
    if (status) {
      status.textContent = "New access notification received.";
    }
    list.setAttribute("data-live-count", String(Number(list.getAttribute("data-live-count") || "0") + 1));
  });
  source.addEventListener("open", function () {
    list.setAttribute("data-live", "open");
  });
});
