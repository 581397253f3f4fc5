// petray console: progressive enhancement only; every page works without this file.
"use strict";

const LIVE_REFRESH_MS = 1500; // issue 11: under the original console's 2 s

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.hasAttribute && form.hasAttribute("data-bulk")) {
    // Bulk actions ask first, naming what and how many.
    const picked = form.querySelectorAll("input[name=ids]:checked").length;
    const action = event.submitter ? event.submitter.value : "";
    if (!picked) {
      event.preventDefault();
      window.alert("Select one or more tasks first.");
      return;
    }
    const what = `${picked} task${picked === 1 ? "" : "s"}`;
    const question = {
      retry: `Retry ${what} from the stage where each stopped?`,
      cancel: `Cancel ${what}?`,
      delete: `Delete ${what} with their received images and outputs? This cannot be undone.`,
    }[action] || `Apply to ${what}?`;
    if (!window.confirm(question)) {
      event.preventDefault();
    }
    return;
  }
  // Destructive actions ask first (retry, restart, cancel, delete, remove).
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function sizeBars() {
  // Bar heights come from data attributes: the CSP forbids inline style attributes.
  for (const seg of document.querySelectorAll(".seg[data-h]")) {
    seg.style.height = `${seg.getAttribute("data-h")}%`;
  }
}

function updateBulk() {
  const boxes = document.querySelectorAll("input[name=ids]");
  const picked = document.querySelectorAll("input[name=ids]:checked").length;
  const count = document.getElementById("bulk-count");
  if (count) {
    count.textContent = picked ? `${picked} selected:` : "Select tasks for:";
  }
  const all = document.getElementById("select-all");
  if (all) {
    all.checked = boxes.length > 0 && picked === boxes.length;
    all.indeterminate = picked > 0 && picked < boxes.length;
  }
}

// Live refresh (issue 11): parts of the page marked data-live are fetched again and swapped in
// place, without reloading. Paused while the user acts: something selected, a field focused
// or text being selected, or the tab hidden. Stops once the page says it is final.
function userIsActing() {
  if (document.hidden) return true;
  if (document.querySelector("input[name=ids]:checked")) return true;
  const focused = document.activeElement;
  if (focused && focused !== document.body && focused.matches("input, select, textarea, summary")) {
    return true;
  }
  if (document.querySelector("details[open]")) return true;
  const selection = window.getSelection();
  return Boolean(selection && selection.toString());
}

function startLiveRefresh() {
  if (!document.querySelector("[data-live]") || document.querySelector("[data-live-final]")) {
    return;
  }
  const note = document.getElementById("live-note");
  const paused = document.getElementById("live-paused");
  if (note) note.hidden = false;
  let busy = false;
  const timer = window.setInterval(async () => {
    const acting = userIsActing();
    if (paused) paused.hidden = !acting;
    if (busy || acting) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      // Logged out or the task deleted: leave the page as it is.
      if (!response.ok || response.redirected) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      if (userIsActing()) return; // the user started something while we fetched
      for (const part of fresh.querySelectorAll("[data-live]")) {
        const here = document.querySelector(`[data-live="${part.getAttribute("data-live")}"]`);
        if (here && here.innerHTML !== part.innerHTML) {
          here.innerHTML = part.innerHTML;
        }
      }
      sizeBars();
      updateBulk();
      if (fresh.querySelector("[data-live-final]")) {
        window.clearInterval(timer);
        if (note) note.hidden = true;
      }
    } catch (error) {
      // The gateway restarting: try again at the next tick.
    } finally {
      busy = false;
    }
  }, LIVE_REFRESH_MS);
}

document.addEventListener("change", (event) => {
  const target = event.target;
  if (target.id === "select-all") {
    for (const box of document.querySelectorAll("input[name=ids]")) {
      box.checked = target.checked;
    }
  }
  if (target.id === "select-all" || target.name === "ids") {
    updateBulk();
    target.blur(); // a ticked box pauses the refresh by itself, not by holding the focus
  }
});

document.addEventListener("DOMContentLoaded", () => {
  sizeBars();
  updateBulk();
  startLiveRefresh();
});
