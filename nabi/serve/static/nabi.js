// nabi serve: the pages' script. Plain JavaScript, no libraries; text from the server is only ever
// put into the page with textContent (never as HTML).
"use strict";

const nabi = { session: null, individuals: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.className = message ? (kind || "info") : "";
}

function pct(x) { return (100 * x).toFixed(1) + " %"; }

async function api(method, url, body, isForm, retried) {
  const headers = {};
  if (method !== "GET") {
    headers["X-CSRF-Token"] = nabi.session.csrf_token;
    const token = sessionStorage.getItem("nabi-token");
    if (nabi.session.token_required && token) headers["Authorization"] = "Bearer " + token;
  }
  let payload;
  if (body !== undefined) {
    if (isForm) payload = body;
    else { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  }
  const response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 403 && !retried && data && String(data.detail).includes("X-CSRF-Token")) {
    nabi.session = await api("GET", "/api/session");      // the server was restarted: a new CSRF token
    return api(method, url, body, isForm, true);
  }
  if (!response.ok && !(data && data.results)) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) detail = detail.map(d => d.msg).join("; ");
    throw new Error(detail || ("the server answered " + response.status));
  }
  return data;
}

async function loadIndividuals() {
  nabi.individuals = await api("GET", "/api/individuals");
  return nabi.individuals;
}

function answerText(result) {
  if (!result) return "no answer";
  if (result.answer === "background") return "background (no animal)";
  if (result.answer === "known") return result.name;
  return "a new individual? (closest: " + (result.name || "none") + ")";
}

// One photo with its answer, candidates, heat-map toggle and the four decision buttons.
function photoCard(photo) {
  const r = photo.result;
  const card = el("article", { class: "card", "data-photo-id": photo.id });
  const img = el("img", { class: "query-img", src: photo.url, alt: "photo " + photo.id });
  const query = el("div", { class: "query" }, img);
  if (photo.heatmap_url) {
    const toggle = el("input", { type: "checkbox", class: "heat-toggle" });
    toggle.addEventListener("change", () => { img.src = toggle.checked ? photo.heatmap_url : photo.url; });
    query.append(el("label", { class: "toggle" }, toggle, " heat map"));
  }
  const answer = el("p", { class: "answer" }, "Answer: ",
    el("strong", { class: "answer-name answer-" + (r ? r.answer : "none"), text: answerText(r) }));
  if (r) answer.append(el("span", { class: "score", text: " · similarity " + pct(r.similarity) + " · margin " + pct(r.margin) }));
  const meta = el("p", { class: "hint", text: [photo.original_name, photo.taken_at ? "taken " + photo.taken_at : "uploaded " + photo.uploaded_at,
    photo.latitude !== null ? "GPS " + photo.latitude.toFixed(5) + ", " + photo.longitude.toFixed(5) : photo.place].filter(Boolean).join(" · ") });
  const cands = el("ol", { class: "candidates" });
  for (const c of (r ? r.candidates : [])) {
    cands.append(el("li", { class: "candidate" },
      c.photo_url ? el("img", { src: c.photo_url, alt: c.name }) : el("span", { class: "nophoto", text: "no photo yet" }),
      el("span", { class: "cand-name", text: c.name }), el("span", { class: "score", text: pct(c.similarity) })));
  }
  const status = el("p", { class: "status" });
  const actions = el("div", { class: "actions" });
  const body = el("div", { class: "body" }, answer, meta, el("h3", { text: "Top candidates" }), cands, actions, status);
  card.append(query, body);
  if (photo.decision) { showDecided(card, photo.decision); return card; }

  async function decide(payload) {
    payload.photo_id = photo.id;
    payload.request_id = photo.id + "-" + Date.now() + "-" + Math.random().toString(36).slice(2);
    const place = document.getElementById("place");
    if (place && place.value.trim()) payload.place = place.value.trim();
    try {
      const res = await api("POST", "/api/decisions", payload);
      showDecided(card, res.photo.decision);
      flash("Saved.", "ok");
    } catch (e) { status.textContent = e.message; status.className = "status error"; }
  }
  const confirm = el("button", { type: "button", class: "confirm", text: "Confirm",
    disabled: !r || (r.answer !== "known" && r.answer !== "background"), onclick: () => decide({ action: "confirm" }) });
  const pick = el("select", { class: "other-select", hidden: true });
  const pickGo = el("button", { type: "button", class: "other-go", hidden: true, text: "OK",
    onclick: () => decide({ action: "other", individual_id: Number(pick.value) }) });
  const other = el("button", { type: "button", class: "other", text: "Another individual…", onclick: async () => {
    pick.replaceChildren(...(await loadIndividuals()).map(i => el("option", { value: i.id, text: i.name })));
    pick.hidden = false; pickGo.hidden = false; pick.focus();
  } });
  const nameInput = el("input", { class: "new-name", hidden: true, maxlength: 80, placeholder: "name" });
  const nameGo = el("button", { type: "button", class: "new-go", hidden: true, text: "Add",
    onclick: () => decide({ action: "new", name: nameInput.value }) });
  const fresh = el("button", { type: "button", class: "new", text: "New individual", onclick: () => {
    nameInput.hidden = false; nameGo.hidden = false; nameInput.focus();
  } });
  if (nabi.session && !nabi.session.can_enrol_new) fresh.title = "a classifier run cannot learn new individuals; serve a gallery";
  const none = el("button", { type: "button", class: "not-identifiable", text: "Not identifiable",
    onclick: () => decide({ action: "not_identifiable" }) });
  actions.append(confirm, other, pick, pickGo, fresh, nameInput, nameGo, none);
  return card;
}

function showDecided(card, decision) {
  card.classList.add("decided");
  const actions = card.querySelector(".actions");
  const label = { confirm: "Confirmed", other: "Identified", new: "New individual", not_identifiable: "Not identifiable",
                  background: "Background" }[decision.action] || decision.action;
  const text = label + (decision.name ? ": " + decision.name : "");
  actions.replaceChildren(el("p", { class: "decided-text", text }));
  const status = card.querySelector(".status");
  status.textContent = ""; status.className = "status";
}

function uploadErrorCard(r) {
  return el("article", { class: "card refused" }, el("p", { class: "error", text: r.error }));
}

// -- pages ---------------------------------------------------------------------------------------
const pages = {
  async identify() {
    const input = document.getElementById("files");
    const drop = document.getElementById("drop");
    const results = document.getElementById("results");
    async function send(files) {
      if (!files.length) return;
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      const place = document.getElementById("place").value.trim();
      if (place) form.append("place", place);
      flash("Identifying " + files.length + " photo" + (files.length > 1 ? "s" : "") + "…", "info");
      try {
        const data = await api("POST", "/api/identify", form, true);
        for (const r of data.results) results.prepend(r.ok ? photoCard(r.photo) : uploadErrorCard(r));
        const refused = data.results.filter(r => !r.ok).length;
        flash(refused ? refused + " of " + data.results.length + " refused." : "Done.", refused ? "error" : "ok");
      } catch (e) { flash(e.message, "error"); }
      input.value = "";
    }
    input.addEventListener("change", () => send([...input.files]));
    drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); send([...e.dataTransfer.files]); });
  },

  async review() {
    const queue = document.getElementById("queue");
    const photos = await api("GET", "/api/review");
    queue.replaceChildren(...photos.map(photoCard));
    if (!photos.length) queue.append(el("p", { class: "hint", text: "Nothing is waiting for a decision." }));
  },

  async individuals() {
    const list = await loadIndividuals();
    const body = document.querySelector("#individuals-table tbody");
    body.replaceChildren(...list.map(i => el("tr", {},
      el("td", {}, i.photo_url ? el("img", { class: "thumb", src: i.photo_url, alt: "" }) : ""),
      el("td", {}, el("a", { href: "/individuals/" + i.id, text: i.name })),
      el("td", { text: String(i.sightings) }), el("td", { text: i.first_seen || "" }), el("td", { text: i.last_seen || "" }))));
    for (const id of ["merge-source", "merge-target"]) {
      document.getElementById(id).replaceChildren(...list.map(i => el("option", { value: i.id, text: i.name })));
    }
    if (list.length > 1) document.getElementById("merge-target").selectedIndex = 1;
    document.getElementById("merge-form").onsubmit = async e => {
      e.preventDefault();
      const source = document.getElementById("merge-source"), target = document.getElementById("merge-target");
      const src = Number(source.value), dst = Number(target.value);
      const names = [source.selectedOptions[0].textContent, target.selectedOptions[0].textContent];
      if (!window.confirm("Merge " + names[0] + " into " + names[1] + "? Its sightings move to " + names[1] + ".")) return;
      try {
        const res = await api("POST", "/api/individuals/merge", { source_id: src, target_id: dst });
        flash("Merged into " + res.name + ".", "ok");
        await pages.individuals();
      } catch (err) { flash(err.message, "error"); }
    };
    const audit = await api("GET", "/api/audit?limit=50");
    document.getElementById("audit").replaceChildren(...audit.map(a =>
      el("li", { text: a.at + "  " + a.action + "  " + JSON.stringify(a.detail) })));
  },

  async individual() {
    const id = Number(location.pathname.split("/").pop());
    const ind = await api("GET", "/api/individuals/" + id);
    document.title = ind.name + " · nabi";
    document.getElementById("individual-name").textContent = ind.name;
    document.getElementById("individual-stats").textContent = ind.merged_into
      ? "merged into #" + ind.merged_into
      : ind.count + " sighting" + (ind.count === 1 ? "" : "s") + (ind.count ? " · first " + ind.first_seen + " · last " + ind.last_seen : "");
    document.getElementById("merged-from").textContent = ind.merged_from.length
      ? "Also known as: " + ind.merged_from.map(m => m.name).join(", ") : "";
    document.getElementById("photos").replaceChildren(...ind.sightings.map(s =>
      el("figure", {}, el("img", { src: s.photo_url, alt: ind.name }), el("figcaption", { text: s.time + (s.place ? " · " + s.place : "") }))));
    document.getElementById("rename-form").onsubmit = async e => {
      e.preventDefault();
      try {
        await api("POST", "/api/individuals/" + id + "/rename", { name: document.getElementById("rename-input").value });
        flash("Renamed.", "ok");
        await pages.individual();
      } catch (err) { flash(err.message, "error"); }
    };
  },

  async sightings() {
    const select = document.getElementById("filter-individual");
    for (const i of await loadIndividuals()) select.append(el("option", { value: i.id, text: i.name }));
    async function show() {
      const q = new URLSearchParams();
      if (select.value) q.set("individual", select.value);
      const from = document.getElementById("filter-from").value, to = document.getElementById("filter-to").value;
      if (from) q.set("date_from", from);
      if (to) q.set("date_to", to);
      document.getElementById("csv-link").href = "/api/sightings.csv?" + q;
      const rows = await api("GET", "/api/sightings?" + q);
      document.querySelector("#sightings-table tbody").replaceChildren(...rows.map(s => el("tr", {},
        el("td", {}, el("img", { class: "thumb", src: s.photo_url, alt: "" })),
        el("td", {}, el("a", { href: "/individuals/" + s.individual_id, text: s.name })),
        el("td", { text: s.time + (s.time_source === "upload" ? " (upload)" : "") }),
        el("td", { text: s.latitude !== null ? s.latitude.toFixed(5) + ", " + s.longitude.toFixed(5) : (s.place || "") }),
        el("td", { text: s.original_name || "" }))));
    }
    document.getElementById("filter-form").onsubmit = e => { e.preventDefault(); show().catch(err => flash(err.message, "error")); };
    await show();
  },
};

document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page) a.classList.add("current");
  try {
    nabi.session = await api("GET", "/api/session");
    if (nabi.session.token_required) {
      const box = document.getElementById("token-box"), input = document.getElementById("token");
      box.hidden = false;
      input.value = sessionStorage.getItem("nabi-token") || "";
      input.addEventListener("change", () => sessionStorage.setItem("nabi-token", input.value));
    }
    await pages[page === "individual" ? "individual" : page]();
    document.body.dataset.ready = "1";
  } catch (e) { flash(e.message, "error"); }
});
