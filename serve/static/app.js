// petray console: progressive enhancement only; every page works without this file.
"use strict";

document.addEventListener("submit", (event) => {
  // Destructive actions ask first (retry, restart, cancel, delete, remove).
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", () => {
  // Bar heights come from data attributes: the CSP forbids inline style attributes.
  for (const seg of document.querySelectorAll(".seg[data-h]")) {
    seg.style.height = `${seg.getAttribute("data-h")}%`;
  }
});
