// The viewer's only script (served by the viewer; nothing from the internet). It submits the
// filter form when a choice changes, and keeps the top bar's run state current.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form.filters");
  if (form) {
    form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.submit()));
  }
  const live = document.getElementById("live");
  if (!live) return;
  const poll = async () => {
    try {
      const r = await fetch(live.dataset.statusUrl, { cache: "no-store" });
      if (!r.ok) return;
      const s = await r.json();
      live.textContent = s.text;
      if (s.busy) setTimeout(poll, 3000);
    } catch (e) { /* the viewer was stopped: leave the page as it is */ }
  };
  setTimeout(poll, 3000);
});
