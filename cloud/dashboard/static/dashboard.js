// EdgeFleet dashboard: live regions, instant filters and confirmations. No dependencies.
"use strict";
(function () {
  const POLL_MS = 2000;
  const status = () => document.getElementById("live-status");

  // Fetch the region's fragment (?partial=1) and swap it in when it changed.
  async function refresh(region) {
    const url = new URL(region.dataset.live, location.origin);
    new URLSearchParams(location.search).forEach((v, k) => {
      if (k !== "message" && k !== "error") url.searchParams.set(k, v);
    });
    url.searchParams.set("partial", "1");
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { "accept": "text/html" } });
    } catch (err) {
      if (status()) status().textContent = "offline: retrying";
      return;
    }
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) { if (status()) status().textContent = "update failed (HTTP " + response.status + ")"; return; }
    const html = await response.text();
    if (html !== region.dataset.lastHtml) {
      region.dataset.lastHtml = html;
      region.innerHTML = html;
      bindConfirmations(region);
    }
    region.dataset.refreshedAt = String(Date.now());
    if (status()) status().textContent = "live · updated " + new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function startPolling() {
    const regions = document.querySelectorAll("[data-live]");
    regions.forEach((region) => {
      const tick = async () => {
        if (!document.hidden) await refresh(region);
        setTimeout(tick, POLL_MS);
      };
      setTimeout(tick, POLL_MS);
    });
  }

  // Filters apply as you type: the URL keeps them, so a reload or a shared link shows the same view.
  function bindFilters() {
    document.querySelectorAll("form[data-live-filter]").forEach((form) => {
      const region = document.getElementById(form.dataset.liveFilter);
      let timer = null;
      const apply = () => {
        const params = new URLSearchParams(new FormData(form));
        [...params.keys()].forEach((k) => { if (!params.get(k)) params.delete(k); });
        history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
        if (region) refresh(region);
      };
      form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 150); });
      form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
    });
  }

  // Actions ask first. The server also insists (confirm=yes), and asks on a page of its own without JS.
  function bindConfirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach((form) => {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", (event) => {
        // A dry run (e.g. "Preview plan") changes nothing: no question to ask.
        if (event.submitter && event.submitter.hasAttribute("data-no-confirm")) return;
        if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
        const field = form.querySelector("input[name=confirm]");
        if (field) field.value = "yes";
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindFilters();
    bindConfirmations(document);
    startPolling();
  });
})();
