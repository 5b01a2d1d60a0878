// nabi serve: the sign-in page. The token is exchanged for an HttpOnly cookie; it is never stored by the page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("signin-form"), flash = document.getElementById("flash");
  form.addEventListener("submit", async e => {
    e.preventDefault();
    const response = await fetch("/api/signin", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: document.getElementById("token").value }) });
    if (response.ok) {
      const next = new URLSearchParams(location.search).get("next") || "/";
      location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
    } else {
      let detail = "sign-in failed (" + response.status + ")";
      try { detail = (await response.json()).detail || detail; } catch (err) { /* not JSON */ }
      flash.textContent = detail; flash.className = "error";
    }
  });
  document.body.dataset.ready = "1";
});
