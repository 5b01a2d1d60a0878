// nabi serve: the pages' script. Plain JavaScript, no libraries; text from the server is only ever put into
// the page with textContent (never as HTML). Every page is the same shell; pages[name] builds its content.
"use strict";

const nabi = { session: null, individuals: [] };
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function fill(node, ...kids) {       // replaceChildren without the null/false placeholders of optional parts
  node.replaceChildren(...kids.filter(k => k !== null && k !== undefined && k !== false));
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.className = message ? (kind || "info") : "";
}

function pct(x) { return (100 * x).toFixed(1) + " %"; }
const content = () => document.getElementById("content");

// -- times: server times are UTC (…Z) and shown in this browser's zone; EXIF times are the camera's clock ----
const LOCAL = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
function utcTime(s) {
  if (!s) return "";
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleString(undefined, LOCAL);
}
function cameraTime(s, offset) {
  if (!s) return "";
  if (offset) { const d = new Date(s + offset); if (!isNaN(d)) return d.toLocaleString(undefined, LOCAL); }
  return s.replace("T", " ").slice(0, 16) + " (camera clock)";
}
function sightingTime(s) { return s.time_source === "exif" ? cameraTime(s.time, s.taken_offset) : utcTime(s.time); }
function photoTime(p) { return p.taken_at ? "taken " + cameraTime(p.taken_at, p.taken_offset) : "uploaded " + utcTime(p.uploaded_at); }
function seenTime(t) { return !t ? "" : (t.endsWith("Z") ? utcTime(t) : cameraTime(t)); }

// -- the API -------------------------------------------------------------------------------------------
async function api(method, url, body, isForm, retried) {
  const headers = {};
  if (method !== "GET") {
    headers["X-CSRF-Token"] = nabi.session ? nabi.session.csrf_token : "";
    const who = localStorage.getItem("nabi-who");
    if (who) headers["X-Nabi-User"] = unescape(encodeURIComponent(who));   // UTF-8 bytes as Latin-1
  }
  let payload;
  if (body !== undefined) {
    if (isForm) payload = body;
    else { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  }
  const response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("sign in first");
  }
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

function individualOptions(list, exclude) {
  return list.filter(i => i.id !== exclude).map(i => el("option", { value: i.id, text: i.name + " (#" + i.id + ")" }));
}

// -- a photo with its answer and what can be done with it -----------------------------------------------------
const DECIDED = { confirm: "Confirmed", other: "Identified", new: "New individual", not_identifiable: "Not identifiable",
                  background: "Background" };

function answerBlock(r) {
  const block = el("div", { class: "answer" });
  if (!r) return block.appendChild(el("p", { text: "no answer" })) && block;
  block.append(el("p", { class: "words level-" + r.level },
    el("strong", { class: "answer-words", text: r.words }),
    r.individual ? el("span", { class: "answer-name", hidden: true, text: r.individual.name }) : null));
  const facts = [];
  if (r.probability !== null && r.probability !== undefined) facts.push("probability " + pct(r.probability));
  facts.push("similarity " + pct(r.similarity));
  if (r.margin !== null && r.margin !== undefined) facts.push("margin " + pct(r.margin));
  if (r.threshold !== null && r.threshold !== undefined) facts.push("threshold " + pct(r.threshold));
  block.append(el("p", { class: "score", text: facts.join(" · ") }));
  if (r.sighting_photos) block.append(el("p", { class: "hint sighting-answer",
    text: "One answer for the " + r.sighting_photos + " photos of this sighting, from all of them." }));
  if (r.candidates.length) {
    const cands = el("ol", { class: "candidates" });
    for (const c of r.candidates) {
      const name = c.individual ? c.individual.name : "?";
      cands.append(el("li", { class: "candidate" },
        c.thumb_url ? el("img", { src: c.thumb_url, alt: name, loading: "lazy" }) : el("span", { class: "nophoto", text: "no photo yet" }),
        c.individual ? el("a", { class: "cand-name", href: "/individuals/" + c.individual.id, text: name })
                     : el("span", { class: "cand-name", text: name }),
        el("span", { class: "score", text: pct(c.probability !== null && c.probability !== undefined ? c.probability : c.similarity) })));
    }
    block.append(el("h3", { text: "Closest individuals" }), cands);
  }
  return block;
}

function photoCard(photo, onChange) {
  const r = photo.result;
  const card = el("article", { class: "card", "data-photo-id": photo.id });
  const img = el("img", { class: "query-img", src: photo.thumb_url, alt: "photo " + photo.id });
  const query = el("div", { class: "query" }, el("a", { href: "/photos/" + photo.id }, img));
  if (photo.heatmap_url) {
    const toggle = el("input", { type: "checkbox", class: "heat-toggle" });
    toggle.addEventListener("change", () => { img.src = toggle.checked ? photo.heatmap_url : photo.thumb_url; });
    query.append(el("label", { class: "toggle" }, toggle, " heat map"));
  }
  const where = photo.latitude !== null ? "GPS " + photo.latitude.toFixed(5) + ", " + photo.longitude.toFixed(5) : photo.place;
  const meta = el("p", { class: "hint", text: [photo.original_name, photoTime(photo), where,
    photo.working_copy ? "identified through a smaller copy (" + photo.width + "×" + photo.height + ")" : null].filter(Boolean).join(" · ") });
  const status = el("p", { class: "status" });
  const actions = el("div", { class: "actions" });
  card.append(query, el("div", { class: "body" }, answerBlock(r), meta, actions, status));

  async function run(method, url, payload) {
    try {
      const res = await api(method, url, payload);
      Object.assign(photo, res.photo);
      render();
      flash("Saved.", "ok");
      if (onChange) onChange(res);
    } catch (e) { status.textContent = e.message; status.className = "status error"; }
  }
  function decide(payload) {
    payload.photo_id = photo.id;
    payload.request_id = photo.id + "-" + Date.now() + "-" + Math.random().toString(36).slice(2);
    const place = document.getElementById("place");
    if (place && place.value.trim()) payload.place = place.value.trim();
    return run("POST", "/api/decisions", payload);
  }
  function picker(label, go) {     // "choose an individual" select + OK, shown on demand
    const pick = el("select", { class: "other-select", hidden: true, "aria-label": label });
    const ok = el("button", { type: "button", class: "other-go", hidden: true, text: "OK", onclick: () => go(Number(pick.value)) });
    const open = async () => {
      pick.replaceChildren(...individualOptions(await loadIndividuals(),
        photo.decision && photo.decision.individual ? photo.decision.individual.id : null));
      pick.hidden = false; ok.hidden = false; pick.focus();
    };
    return { pick, ok, open };
  }
  function render() {
    status.textContent = ""; status.className = "status";
    const answer = card.querySelector(".answer");
    answer.replaceWith(answerBlock(photo.result));
    if (photo.decision) {
      const d = photo.decision;
      card.classList.add("decided");
      const text = (DECIDED[d.action] || d.action) + (d.individual ? ": " + d.individual.name : "");
      const move = picker("move to", id => run("POST", "/api/photos/" + photo.id + "/move",
        { individual_id: id, request_id: "move-" + photo.id + "-" + Date.now() }));
      fill(actions,
        el("p", { class: "decided-text", text }),
        el("button", { type: "button", class: "undo", text: "Undo", onclick: () => run("POST", "/api/photos/" + photo.id + "/undo") }),
        el("button", { type: "button", class: "move", text: "Move to…", onclick: move.open }), move.pick, move.ok);
      return;
    }
    card.classList.remove("decided");
    const other = picker("another individual", id => decide({ action: "other", individual_id: id }));
    const confirm = el("button", { type: "button", class: "confirm",
      text: r && r.answer === "background" ? "Confirm: background" : "Confirm",
      disabled: !r || (r.answer !== "known" && r.answer !== "background"), onclick: () => decide({ action: "confirm" }) });
    const nameInput = el("input", { class: "new-name", hidden: true, maxlength: 80, placeholder: "name", "aria-label": "new name" });
    const nameGo = el("button", { type: "button", class: "new-go", hidden: true, text: "Add",
      onclick: () => decide({ action: "new", name: nameInput.value }) });
    const fresh = nabi.session.can_enrol_new ? el("button", { type: "button", class: "new", text: "New individual",
      onclick: () => { nameInput.hidden = false; nameGo.hidden = false; nameInput.focus(); } }) : null;
    fill(actions, confirm,
      el("button", { type: "button", class: "other", text: "Another individual…", onclick: other.open }), other.pick, other.ok,
      fresh, fresh ? nameInput : null, fresh ? nameGo : null,
      el("button", { type: "button", class: "not-identifiable", text: "Not identifiable",
        onclick: () => decide({ action: "not_identifiable" }) }));
  }
  render();
  return card;
}

function uploadErrorCard(r) {
  return el("article", { class: "card refused" }, el("p", { class: "error", text: r.error }),
    r.photo_id ? el("a", { href: "/photos/" + r.photo_id, text: "see photo #" + r.photo_id }) : null);
}

function table(id, headers, rows) {
  return el("table", { id, class: "data" }, el("thead", {}, el("tr", {}, ...headers.map(h => el("th", { text: h })))),
    el("tbody", {}, ...rows));
}

// -- pages ---------------------------------------------------------------------------------------------
const pages = {
  async identify() {
    const input = el("input", { id: "files", name: "files", type: "file", accept: "image/jpeg,image/png,image/webp", multiple: true });
    const drop = el("label", { id: "drop", class: "drop", for: "files" }, "Drop photos here, or ",
      el("span", { class: "linkish", text: "choose files" }), input);
    const place = el("input", { id: "place", name: "place", maxlength: 200, placeholder: "e.g. library lawn" });
    const together = el("input", { id: "together", name: "together", type: "checkbox" });
    const results = el("div", { id: "results", class: "cards" });
    content().append(el("form", { id: "upload-form" }, drop,
      el("p", {}, el("label", {}, "Place (used when a photo has no GPS position) ", place)),
      el("p", {}, el("label", {}, together, " These photos show one animal at one sighting: answer them together"))),
      results);
    async function send(files) {
      if (!files.length) return;
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      if (place.value.trim()) form.append("place", place.value.trim());
      if (together.checked && files.length > 1) form.append("together", "true");
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
    const queue = el("div", { id: "queue", class: "cards" });
    content().append(el("p", { class: "hint", text: "Photos waiting for a decision, the least sure answer first." }), queue);
    const photos = await api("GET", "/api/review");
    queue.replaceChildren(...photos.map(p => photoCard(p)));
    if (!photos.length) queue.append(el("p", { class: "hint", text: "Nothing is waiting for a decision." }));
  },

  async individuals() {
    const params = new URLSearchParams(location.search);
    const days = el("input", { id: "not-seen-days", type: "number", min: 0, value: params.get("not_seen_days") || 30, size: 4 });
    const month = new Date().toISOString().slice(0, 8) + "01";
    const filters = el("form", { id: "list-filter", class: "row" },
      el("a", { class: "button", href: "/individuals", text: "All" }),
      el("a", { class: "button", id: "new-this-month", href: "/individuals?new_since=" + month, text: "New this month" }),
      el("label", {}, "Not seen for ", days, " days "),
      el("button", { type: "submit", text: "Show" }));
    filters.onsubmit = e => { e.preventDefault(); location.assign("/individuals?not_seen_days=" + Number(days.value)); };
    const q = new URLSearchParams();
    if (params.get("new_since")) q.set("new_since", params.get("new_since"));
    if (params.get("not_seen_days")) q.set("not_seen_days", params.get("not_seen_days"));
    const list = await api("GET", "/api/individuals?" + q);
    const what = params.get("new_since") ? "first seen since " + params.get("new_since")
      : params.get("not_seen_days") ? "not seen for " + params.get("not_seen_days") + " days (or never)" : "";
    const rows = list.map(i => el("tr", {},
      el("td", {}, i.thumb_url ? el("img", { class: "thumb", src: i.thumb_url, alt: "", loading: "lazy" }) : ""),
      el("td", {}, el("a", { href: "/individuals/" + i.id, text: i.name })),
      el("td", { text: String(i.sightings) }), el("td", { text: seenTime(i.first_seen) }), el("td", { text: seenTime(i.last_seen) })));
    const all = what ? await loadIndividuals() : (nabi.individuals = list);
    const src = el("select", { id: "merge-source", required: true }, ...individualOptions(all));
    const dst = el("select", { id: "merge-target", required: true }, ...individualOptions(all));
    if (all.length > 1) dst.selectedIndex = 1;
    const merge = el("form", { id: "merge-form", class: "row" }, el("label", {}, "Merge ", src), el("label", {}, "into ", dst),
      el("button", { type: "submit", text: "Merge" }));
    merge.onsubmit = async e => {
      e.preventDefault();
      const names = [src.selectedOptions[0].textContent, dst.selectedOptions[0].textContent];
      if (!window.confirm("Merge " + names[0] + " into " + names[1] + "? Its sightings move to " + names[1] + ".")) return;
      try {
        const res = await api("POST", "/api/individuals/merge", { source_id: Number(src.value), target_id: Number(dst.value) });
        flash("Merged into " + res.name + ".", "ok");
        content().replaceChildren();
        await pages.individuals();
      } catch (err) { flash(err.message, "error"); }
    };
    fill(content(), filters, what ? el("p", { class: "hint", id: "list-what", text: list.length + " individual(s) " + what }) : null,
      table("individuals-table", ["", "Name", "Sightings", "First seen", "Last seen"], rows),
      el("h2", { text: "Merge two individuals" }), merge);
  },

  async individual() {
    const id = Number(location.pathname.split("/").pop());
    const ind = await api("GET", "/api/individuals/" + id);
    document.title = ind.name + " · nabi";
    document.getElementById("title").replaceChildren(el("span", { id: "individual-name", text: ind.name }));
    const stats = ind.merged_into
      ? el("p", { class: "hint" }, "merged into ", el("a", { href: "/individuals/" + ind.merged_into.id, text: ind.merged_into.name }))
      : el("p", { id: "individual-stats", class: "hint", text: "#" + ind.id + " · " + ind.count + " sighting" + (ind.count === 1 ? "" : "s") +
          (ind.count ? " · first seen " + seenTime(ind.first_seen) + " · last seen " + seenTime(ind.last_seen) : "") });
    const rename = el("form", { id: "rename-form", class: "row" },
      el("label", {}, "New name ", el("input", { id: "rename-input", required: true, maxlength: 80 })),
      el("button", { type: "submit", text: "Rename" }));
    rename.onsubmit = async e => {
      e.preventDefault();
      try {
        await api("POST", "/api/individuals/" + id + "/rename", { name: document.getElementById("rename-input").value });
        flash("Renamed.", "ok");
        await refresh();
      } catch (err) { flash(err.message, "error"); }
    };
    // the club's fields and notes
    const inputs = {};
    const fieldRows = nabi.session.fields.map(f => {
      const value = ind.fields[f.key] || "";
      let input;
      if (f.type === "choice") input = el("select", { name: f.key }, el("option", { value: "", text: "—" }),
        ...f.choices.map(c => el("option", { value: c, text: c, selected: c === value })));
      else if (f.type === "longtext") input = el("textarea", { name: f.key, rows: 2 });
      else input = el("input", { name: f.key, type: f.type === "date" ? "date" : f.type === "number" ? "number" : "text", step: "any" });
      if (f.type !== "choice") input.value = value;
      inputs[f.key] = input;
      return el("label", { class: "field" }, el("span", { text: f.label }), input, f.help ? el("small", { class: "hint", text: f.help }) : null);
    });
    const notes = el("textarea", { id: "notes", rows: 3 });
    notes.value = ind.notes;
    const details = el("form", { id: "details-form", class: "fields" }, ...fieldRows,
      el("label", { class: "field wide" }, el("span", { text: "Notes" }), notes), el("button", { type: "submit", text: "Save" }));
    details.onsubmit = async e => {
      e.preventDefault();
      const fields = {};
      for (const [k, input] of Object.entries(inputs)) fields[k] = input.value;
      try {
        await api("POST", "/api/individuals/" + id + "/details", { notes: notes.value, fields });
        flash("Saved.", "ok");
      } catch (err) { flash(err.message, "error"); }
    };
    // the photo timeline, newest first, each with undo / move
    const timeline = el("div", { id: "photos", class: "gallery" }, ...ind.timeline.map(s => {
      const move = el("select", { class: "move-select", hidden: true, "aria-label": "move to" });
      const go = el("button", { type: "button", class: "move-go", hidden: true, text: "OK", onclick: async () => {
        try { await api("POST", "/api/photos/" + s.photo_id + "/move", { individual_id: Number(move.value) }); flash("Moved.", "ok"); await refresh(); }
        catch (err) { flash(err.message, "error"); } } });
      return el("figure", { "data-photo-id": s.photo_id },
        el("a", { href: "/photos/" + s.photo_id }, el("img", { src: s.thumb_url, alt: ind.name, loading: "lazy" })),
        el("figcaption", { text: sightingTime(s) + (s.place ? " · " + s.place : "") }),
        el("div", { class: "row small" },
          el("button", { type: "button", class: "undo", text: "Undo", onclick: async () => {
            try { await api("POST", "/api/photos/" + s.photo_id + "/undo"); flash("Undone: photo #" + s.photo_id + " waits in the review queue.", "ok"); await refresh(); }
            catch (err) { flash(err.message, "error"); } } }),
          el("button", { type: "button", class: "move", text: "Move to…", onclick: async () => {
            move.replaceChildren(...individualOptions(await loadIndividuals(), id)); move.hidden = false; go.hidden = false; } }),
          move, go));
    }));
    fill(content(), stats,
      ind.merged_from.length ? el("p", { id: "merged-from", class: "hint", text: "Also known as: " + ind.merged_from.map(m => m.name).join(", ") }) : null,
      ind.merged_into ? null : rename, el("h2", { text: "Details" }), details, el("h2", { text: "Photos" }), timeline,
      ind.timeline.length ? null : el("p", { class: "hint", text: "No sighting yet." }));
    async function refresh() { await pages.individual(); }
  },

  async photo() {
    const id = Number(location.pathname.split("/").pop());
    const photo = await api("GET", "/api/photos/" + id);
    const card = photoCard(photo);
    card.classList.add("single");
    content().append(card, el("p", {}, el("a", { href: photo.url, text: "the original photo" }),
      " (" + photo.width + "×" + photo.height + ", " + Math.round(photo.bytes / 1024) + " KiB)"));
  },

  async sightings() {
    const select = el("select", { id: "filter-individual" }, el("option", { value: "", text: "all" }),
      ...(await loadIndividuals()).map(i => el("option", { value: i.id, text: i.name })));
    const from = el("input", { id: "filter-from", type: "date" }), to = el("input", { id: "filter-to", type: "date" });
    const csv = el("a", { id: "csv-link", class: "button", href: "/api/sightings.csv", download: true, text: "Export CSV" });
    const form = el("form", { id: "filter-form", class: "row" }, el("label", {}, "Individual ", select),
      el("label", {}, "From ", from), el("label", {}, "To ", to), el("button", { type: "submit", text: "Filter" }), csv);
    const body = el("tbody");
    content().append(form, el("table", { id: "sightings-table", class: "data" },
      el("thead", {}, el("tr", {}, ...["", "Individual", "Time", "Place", "File"].map(h => el("th", { text: h })))), body));
    async function show() {
      const q = new URLSearchParams();
      if (select.value) q.set("individual", select.value);
      if (from.value) q.set("date_from", from.value);
      if (to.value) q.set("date_to", to.value);
      csv.href = "/api/sightings.csv?" + q;
      const rows = await api("GET", "/api/sightings?" + q);
      body.replaceChildren(...rows.map(s => el("tr", {},
        el("td", {}, el("a", { href: "/photos/" + s.photo_id }, el("img", { class: "thumb", src: s.thumb_url, alt: "", loading: "lazy" }))),
        el("td", {}, el("a", { href: "/individuals/" + s.individual_id, text: s.name })),
        el("td", { text: sightingTime(s) + (s.time_source === "upload" ? " (upload)" : "") }),
        el("td", { text: s.place || (s.latitude !== null ? s.latitude.toFixed(5) + ", " + s.longitude.toFixed(5) : "") }),
        el("td", { text: s.original_name || "" }))));
    }
    form.onsubmit = e => { e.preventDefault(); show().catch(err => flash(err.message, "error")); };
    await show();
  },

  // Sightings with GPS as points on a plain projection (x = longitude · cos(mean latitude), y = latitude):
  // no map tiles, nothing from another server; each individual has its own colour.
  async map() {
    const select = el("select", { id: "map-individual" }, el("option", { value: "", text: "all individuals" }),
      ...(await loadIndividuals()).map(i => el("option", { value: i.id, text: i.name })));
    const holder = el("div", { id: "map-holder" });
    content().append(el("form", { class: "row" }, el("label", {}, "Show ", select)), holder);
    async function draw() {
      const q = new URLSearchParams({ with_gps: "true" });
      if (select.value) q.set("individual", select.value);
      const rows = await api("GET", "/api/sightings?" + q);
      if (!rows.length) { fill(holder, el("p", { class: "hint", id: "map-empty", text: "No sighting with a GPS position yet (photos whose EXIF holds one)." })); return; }
      const lat0 = rows.reduce((a, s) => a + s.latitude, 0) / rows.length;
      const k = Math.cos(lat0 * Math.PI / 180);
      const xs = rows.map(s => s.longitude * k), ys = rows.map(s => -s.latitude);
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const span = Math.max(x1 - x0, y1 - y0, 1e-4);              // at least ~10 m across
      const W = 800, H = Math.max(240, Math.round(W * Math.max(y1 - y0, span * 0.3) / span)), pad = 30;
      const sx = x => pad + (x - x0) / span * (W - 2 * pad), sy = y => pad + (y - y0) / span * (W - 2 * pad);
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 " + W + " " + (H + pad)); svg.setAttribute("class", "map"); svg.setAttribute("id", "map");
      svg.setAttribute("role", "img"); svg.setAttribute("aria-label", rows.length + " sightings");
      const colour = id => "hsl(" + ((id * 137.508) % 360).toFixed(0) + " 70% 42%)";
      const metres = span * 111320;                                  // degrees of latitude → metres
      const bar = document.createElementNS(SVG, "text");
      bar.setAttribute("x", pad); bar.setAttribute("y", H + pad - 8); bar.setAttribute("class", "scale");
      bar.textContent = "width ≈ " + (metres >= 1000 ? (metres / 1000).toFixed(1) + " km" : Math.round(metres) + " m") + " · north up";
      svg.append(bar);
      for (const s of rows) {
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", sx(s.longitude * k).toFixed(1)); dot.setAttribute("cy", sy(-s.latitude).toFixed(1));
        dot.setAttribute("r", 6); dot.setAttribute("fill", colour(s.individual_id)); dot.setAttribute("class", "sighting");
        dot.setAttribute("data-individual", s.individual_id);
        const title = document.createElementNS(SVG, "title");
        title.textContent = s.name + " · " + sightingTime(s) + (s.place ? " · " + s.place : "");
        dot.append(title);
        const link = document.createElementNS(SVG, "a");
        link.setAttribute("href", "/photos/" + s.photo_id); link.append(dot);
        svg.append(link);
      }
      const who = new Map(rows.map(s => [s.individual_id, s.name]));
      fill(holder, svg, el("ul", { class: "legend" }, ...[...who].map(([id, name]) =>
        el("li", {}, el("span", { class: "swatch", style: null, "data-colour": colour(id) }), name))));
      for (const sw of holder.querySelectorAll(".swatch")) sw.style.background = sw.dataset.colour;
    }
    select.onchange = () => draw().catch(err => flash(err.message, "error"));
    await draw();
  },

  async population() {
    const occasion = el("select", { id: "occasion" }, el("option", { value: "day", text: "a day" }), el("option", { value: "week", text: "a week" }));
    const from = el("input", { id: "pop-from", type: "date" }), to = el("input", { id: "pop-to", type: "date" });
    const form = el("form", { id: "population-form", class: "row" }, el("label", {}, "One occasion is ", occasion),
      el("label", {}, "From ", from), el("label", {}, "To ", to), el("button", { type: "submit", text: "Estimate" }));
    const out = el("div", { id: "population" });
    content().append(el("p", { class: "hint", text: "Each day (or week) with identified photos is an occasion; an animal is “captured” on an occasion when it was photographed. The estimates assume a closed population: no animal arrives or leaves during the period." }), form, out);
    async function show() {
      const q = new URLSearchParams({ occasion: occasion.value });
      if (from.value) q.set("date_from", from.value);
      if (to.value) q.set("date_to", to.value);
      const p = await api("GET", "/api/population?" + q);
      const round = x => x === null || x === undefined ? "—" : (isFinite(x) ? Math.round(x).toLocaleString() : "∞");
      const rows = p.estimates.map(e => el("tr", {}, el("td", { text: e.method }), el("td", { class: "n", text: round(e.n) }),
        el("td", { text: e.low === null ? "—" : round(e.low) + " – " + round(e.high) }), el("td", { class: "hint", text: e.note })));
      const links = ["matrix", "rmark", "secr", "camtrapr", "detectors"].map(layout => {
        const lq = new URLSearchParams(q); lq.set("layout", layout);
        return el("a", { class: "button", href: "/api/capture-histories.csv?" + lq, download: true, text: layout + ".csv" });
      });
      fill(out, el("p", { id: "population-summary", text: p.individuals + " individual(s) seen on " + p.occasions.length + " occasion(s)" +
          (p.occasions.length ? " (" + p.occasions[0] + " … " + p.occasions[p.occasions.length - 1] + ")" : "") }),
        p.estimates.length ? table("estimates", ["Method", "How many", "95 % interval", ""], rows)
                           : el("p", { class: "hint", text: "An estimate needs at least two occasions." }),
        el("h2", { text: "Capture histories for R" }),
        el("p", { class: "hint", text: "matrix: one 0/1 column per occasion · rmark: ch and freq (RMark's process.data; read ch as text) · secr: Session, ID, Occasion, Detector (secr's make.capthist, with detectors.csv as traps) · camtrapr: camtrapR's record table" }),
        el("div", { class: "row" }, ...links));
    }
    form.onsubmit = e => { e.preventDefault(); show().catch(err => flash(err.message, "error")); };
    await show();
  },

  async changes() {
    const log = el("ol", { id: "audit", class: "audit" });
    content().append(el("p", { class: "hint", text: "Every change, newest first: who, when, what. A decision still in force can be undone here." }), log);
    async function show() {
      const entries = await api("GET", "/api/audit?limit=300");
      log.replaceChildren(...entries.map(a => el("li", { "data-action": a.action },
        el("time", { datetime: a.at, text: utcTime(a.at) }), " ",
        el("span", { class: "who", text: a.actor || "" }), " ",
        a.photo_id ? el("a", { href: "/photos/" + a.photo_id, class: "what", text: a.text }) : el("span", { class: "what", text: a.text }),
        a.undo ? el("button", { type: "button", class: "undo", text: "Undo", onclick: async () => {
          try { await api("POST", a.undo); flash("Undone.", "ok"); await show(); } catch (err) { flash(err.message, "error"); } } }) : null)));
    }
    await show();
  },
};

document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page) a.classList.add("current");
  const who = document.getElementById("who");
  who.value = localStorage.getItem("nabi-who") || "";
  who.addEventListener("change", () => localStorage.setItem("nabi-who", who.value.trim()));
  try {
    nabi.session = await api("GET", "/api/session");
    if (nabi.session.token_required) {
      const out = document.getElementById("signout");
      out.hidden = false;
      out.onclick = async () => { await api("POST", "/api/signout"); location.assign("/signin"); };
    }
    if (!nabi.session.calibrated) {
      const banner = document.getElementById("banner");
      banner.hidden = false;
      banner.append("This gallery is not calibrated: its answers never say “not seen before”, and a high similarity is " +
        "not a probability. Calibrate it with ", el("code", { text: nabi.session.calibrate_hint }), " and restart the server.");
    }
    await pages[page]();
    document.body.dataset.ready = "1";
  } catch (e) { flash(e.message, "error"); }
});
