// The shoal console: plain ES module, no build step. Everything it shows comes from the public
// HTTP API with the credential the user signed in with (kept in this tab's sessionStorage).

const main = document.getElementById("main");
const statusBox = document.getElementById("status");
const whoBox = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");

let token = sessionStorage.getItem("shoal.token");
let me = null; // GET /api/v1/auth/me
let view = 0; // the page shown: a render or poll of an earlier page stops (see `live`)

/** A check that stays true while the page shown is the one shown now. */
function live() {
  const shown = view;
  return () => shown === view;
}

const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (n, digits = 0) => (n == null ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: digits }));
const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–");
const enc = encodeURIComponent;
const bytes = (n) => {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${fmt(v, i ? 1 : 0)} ${units[i]}`;
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call the API; the answer's JSON, or an ApiError with the server's message. */
async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the node could not be reached (${e.message})`);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) {
    const err = data && data.error ? data.error : { code: String(r.status), message: text || r.statusText };
    throw new ApiError(r.status, err.code, err.message);
  }
  return data;
}

function say(message) {
  const div = document.createElement("div");
  div.className = "msg";
  div.textContent = message;
  statusBox.append(div);
  setTimeout(() => div.remove(), 8000);
}

/** Run a view's work; a lost credential goes back to the sign-in page, other errors are said. */
async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      signOut("Your credential is no longer valid: sign in again.");
      return undefined;
    }
    say(e.message);
    return undefined;
  }
}


// ---------------------------------------------------------------- sign-in

async function whoAmI() {
  try {
    me = await api("GET", "/api/v1/auth/me");
  } catch (e) {
    me = null;
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
  }
  whoBox.textContent = me ? `${me.name} · ${me.role}` : "";
  signOutButton.hidden = !me || !token;
  return me;
}

function signOut(message) {
  token = null;
  me = null;
  sessionStorage.removeItem("shoal.token");
  whoBox.textContent = "";
  signOutButton.hidden = true;
  if (message) say(message);
  go("#/signin");
}

/** Show the page of `hash` (a hash that is already the location's changes nothing by itself). */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}
signOutButton.addEventListener("click", () => signOut());

function viewSignIn() {
  main.innerHTML = `
    <h1>Sign in</h1>
    <div class="signin">
      <form id="password-form">
        <fieldset><legend>With a user</legend>
          <label>User name <input name="username" autocomplete="username" required></label>
          <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
          <button type="submit">Sign in</button>
        </fieldset>
      </form>
      <form id="key-form">
        <fieldset><legend>With an API key</legend>
          <label>API key <input name="key" type="password" autocomplete="off" required></label>
          <button type="submit">Use this key</button>
        </fieldset>
      </form>
      <p class="muted">A node prints how to get a first credential when it starts with no users.</p>
    </div>`;
  const done = async () => {
    sessionStorage.setItem("shoal.token", token);
    await whoAmI();
    go(location.hash && !location.hash.startsWith("#/signin") ? location.hash : "#/search");
  };
  document.getElementById("password-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    token = null;
    api("POST", "/api/v1/auth/token", { username: f.get("username"), password: f.get("password") })
      .then((t) => {
        token = t.access_token;
        return guarded(done);
      })
      .catch((e) => say(e.status === 401 ? "Sign-in failed: check the user name and password." : e.message));
  });
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = String(new FormData(ev.target).get("key")).trim();
    guarded(async () => {
      if (!(await whoAmI())) {
        token = null;
        throw new Error("That API key is not valid.");
      }
      await done();
    });
  });
  main.querySelector("input").focus();
}

// ---------------------------------------------------------------- search

/** Words too common to be worth marking in a hit. */
const STOP_WORDS = new Set("a an and are as at be by do does for from how in is it of on or the to was what when where which who why with".split(" "));

/** `text` as HTML with the words of `query` marked. */
function marked(text, query) {
  const words = (query.toLowerCase().match(/[\p{L}\p{N}]{2,}/gu) || [])
    .filter((w) => !STOP_WORDS.has(w))
    .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  if (words.length === 0) return esc(text);
  const re = new RegExp(`(${words.join("|")})`, "giu");
  let out = "";
  let last = 0;
  for (const m of text.matchAll(re)) {
    out += esc(text.slice(last, m.index)) + `<mark>${esc(m[0])}</mark>`;
    last = m.index + m[0].length;
  }
  return out + esc(text.slice(last));
}

async function collectionNames() {
  const list = await api("GET", "/api/v1/collections");
  return list.collections.map((c) => c.name);
}

async function viewSearch() {
  const alive = live();
  const names = await collectionNames();
  if (!alive()) return;
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const chosen = params.get("collection") || names[0] || "";
  main.innerHTML = `
    <h1>Search</h1>
    <form id="search-form" class="grid" role="search">
      <label>Collection
        <select name="collection" required>${names.map((n) => `<option${n === chosen ? " selected" : ""}>${esc(n)}</option>`).join("")}</select>
      </label>
      <label class="wide">Query <input name="query" type="search" required placeholder="Ask something" autocomplete="off"></label>
      <label>Mode
        <select name="mode">
          <option value="vector">vector (meaning)</option>
          <option value="keyword">keyword (BM25)</option>
          <option value="hybrid">hybrid (both, fused)</option>
        </select>
      </label>
      <label data-hybrid hidden>Fusion
        <select name="fusion">
          <option value="rrf">reciprocal rank fusion</option>
          <option value="weighted">weighted scores</option>
        </select>
      </label>
      <label data-weighted hidden>Vector weight (alpha: 1 = meaning only, 0 = words only)
        <input name="alpha" type="number" min="0" max="1" step="0.05" value="0.5">
      </label>
      <label>Top k <input name="top_k" type="number" min="1" max="1000" value="10"></label>
      <label class="inline"><input name="rerank" type="checkbox"> Rerank with the cross-encoder</label>
      <label class="wide">Metadata filter (JSON, optional)
        <textarea name="filter" rows="2" placeholder='{"metadata": {"team": "ops"}}'></textarea>
      </label>
      <button type="submit">Search</button>
    </form>
    <div id="results" aria-live="polite"></div>`;
  if (names.length === 0) {
    document.getElementById("results").innerHTML = `<p>No collection is visible to you yet. ${me && me.role === "admin" ? 'Create one under <a href="#/collections">Collections</a>.' : ""}</p>`;
  }
  const form = document.getElementById("search-form");
  // Fusion and its weight only mean something for hybrid search.
  const showFusion = () => {
    const hybrid = form.elements.mode.value === "hybrid";
    form.querySelector("[data-hybrid]").hidden = !hybrid;
    form.querySelector("[data-weighted]").hidden = !(hybrid && form.elements.fusion.value === "weighted");
  };
  form.elements.mode.addEventListener("change", showFusion);
  form.elements.fusion.addEventListener("change", showFusion);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { query: f.get("query"), top_k: Number(f.get("top_k")) || 10, rerank: f.get("rerank") === "on" };
    const mode = String(f.get("mode") || "vector");
    if (mode !== "vector") body.mode = mode;
    if (mode === "hybrid" && f.get("fusion") === "weighted") {
      const alpha = Number(f.get("alpha"));
      if (!(alpha >= 0 && alpha <= 1)) {
        say("The vector weight (alpha) must be between 0 and 1.");
        return;
      }
      body.fusion = "weighted";
      body.alpha = alpha;
    }
    const filter = String(f.get("filter") || "").trim();
    if (filter) {
      try {
        body.filter = JSON.parse(filter);
      } catch (e) {
        say(`The filter is not valid JSON: ${e.message}`);
        return;
      }
    }
    guarded(async () => {
      const r = await api("POST", `/api/v1/collections/${enc(f.get("collection"))}/search`, body);
      if (alive()) showHits(r, body.query);
    });
  });
  form.querySelector("input[name=query]").focus();
}

/** A hit's scores, named by what ranked it: the vectors, BM25, or both fused. */
function scores(h) {
  const one = (name, v) => (v == null ? "" : `<span>${name} <strong>${fmt(v, 4)}</strong></span>`);
  if (h.vector_score == null && h.keyword_score == null) return one("vector score", h.score);
  if (h.vector_score == null && h.keyword_score === h.score) return one("keyword score", h.score);
  return one("fused score", h.score) + one("vector score", h.vector_score) + one("keyword score", h.keyword_score);
}

function showHits(r, query) {
  const t = r.timings || {};
  const stage = (name, v) => (v == null ? "" : `<span>${name} <strong>${fmt(v, 2)} ms</strong></span>`);
  const hits = r.hits
    .map(
      (h, i) => `
    <li class="hit">
      <div class="head">
        <strong>${i + 1}. ${esc(h.document_id)}</strong>
        <span>chunk ${esc(h.chunk_index)}</span>
        ${scores(h)}
        ${h.rerank_score != null ? `<span>rerank score <strong>${fmt(h.rerank_score, 4)}</strong></span>` : ""}
        ${h.metadata && h.metadata.page != null ? `<span>page ${esc(h.metadata.page)}${h.metadata.last_page !== h.metadata.page ? `–${esc(h.metadata.last_page)}` : ""}</span>` : ""}
        ${h.metadata && typeof h.metadata.section === "string" ? `<span>section <strong>${esc(h.metadata.section)}</strong></span>` : ""}
      </div>
      <p>${marked(h.text, query)}</p>
      <details><summary>Metadata</summary><pre>${esc(JSON.stringify(h.metadata, null, 2))}</pre></details>
    </li>`,
    )
    .join("");
  document.getElementById("results").innerHTML = `
    <div class="stages" aria-label="Time per stage">
      <span>total <strong>${fmt(r.took_ms, 2)} ms</strong></span>
      ${stage("embed", t.embed_ms)}${stage("index", t.index_ms)}${stage("rerank", t.rerank_ms)}
      <span class="muted">applied index ${fmt(r.applied_index)}</span>
      ${r.stale ? `<span class="warn">stale: ${esc(r.stale_reason || "")}</span>` : ""}
    </div>
    ${r.hits.length ? `<ol class="hits">${hits}</ol>` : "<p>No hits.</p>"}`;
}

// ---------------------------------------------------------------- collections

async function viewCollections() {
  const alive = live();
  const list = await api("GET", "/api/v1/collections");
  if (!alive()) return;
  const admin = me && me.role === "admin";
  main.innerHTML = `
    <h1>Collections</h1>
    ${
      admin
        ? `<form id="create-form" class="grid"><label>New collection <input name="name" required pattern="[A-Za-z0-9_-]{1,64}" title="1 to 64 letters, digits, _ or -"></label><button type="submit">Create</button></form>`
        : ""
    }
    <div class="table-wrap"><table>
      <caption class="muted">Every collection your credential can see</caption>
      <thead><tr><th>Name</th><th class="num">Documents</th><th class="num">Chunks</th><th class="num">Live points</th><th class="num">Tombstones</th><th class="num">Dimension</th><th>HNSW m / ef_construction</th><th>Created</th></tr></thead>
      <tbody>${list.collections
        .map(
          (c) => `<tr><td><a href="#/collections/${enc(c.name)}">${esc(c.name)}</a></td><td class="num">${fmt(c.documents)}</td><td class="num">${fmt(c.chunks)}</td>
          <td class="num">${fmt(c.index.live_points)}</td><td class="num">${fmt(c.index.tombstones)}</td><td class="num">${esc(c.dimension)}</td><td>${esc(c.index.m)} / ${esc(c.index.ef_construction)}</td><td>${when(c.created_at)}</td></tr>`,
        )
        .join("")}</tbody>
    </table></div>`;
  if (admin) {
    document.getElementById("create-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = new FormData(ev.target).get("name");
      guarded(async () => {
        await api("PUT", `/api/v1/collections/${enc(name)}`);
        location.hash = `#/collections/${enc(name)}`;
      });
    });
  }
}

async function viewCollection(name, after) {
  const alive = live();
  const [c, docs] = await Promise.all([
    api("GET", `/api/v1/collections/${enc(name)}`),
    api("GET", `/api/v1/collections/${enc(name)}/documents?limit=50${after ? `&after=${enc(after)}` : ""}`),
  ]);
  if (!alive()) return;
  const writer = canWrite();
  main.innerHTML = `
    <p><a href="#/collections">Collections</a> › ${esc(name)}</p>
    <h1>${esc(name)}</h1>
    <div class="cards">
      <div class="card"><h3>Content</h3>${fmt(c.documents)} documents · ${fmt(c.chunks)} chunks</div>
      <div class="card"><h3>Index</h3>${fmt(c.index.live_points)} live points · ${fmt(c.index.tombstones)} tombstones<br>m ${esc(c.index.m)} · ef_construction ${esc(c.index.ef_construction)} · ${esc(c.dimension)} dimensions</div>
      ${
        c.storage
          ? `<div class="card"><h3>On this node</h3>store: ${bytes(c.storage.documents_bytes)} of documents, ${bytes(c.storage.chunks_bytes)} of chunks<br>
        index files ${bytes(c.storage.index_files_bytes)}<br>
        in memory: vectors ${bytes(c.storage.vectors_memory_bytes)}, graph links ${bytes(c.storage.graph_memory_bytes)}, keyword index ${bytes(c.storage.keyword_memory_bytes)}</div>`
          : ""
      }
      <div class="card"><h3>Search it</h3><a href="#/search?collection=${enc(name)}">Open the playground</a></div>
    </div>
    ${
      writer
        ? `<h2>Upload</h2>
    <div id="drop" class="drop">
      <p>Drop files here (PDF, DOCX, HTML, Markdown, text, JSON or JSONL), or</p>
      <label class="inline center">Choose files <input id="files" type="file" multiple></label>
    </div>
    <div id="upload-progress" aria-live="polite"></div>`
        : ""
    }
    <h2>Documents</h2>
    <div class="table-wrap"><table>
      <thead><tr><th>Id</th><th>State</th><th class="num">Chunks</th><th class="num">Bytes</th><th>Accepted</th></tr></thead>
      <tbody>${docs.documents
        .map(
          (d) => `<tr><td><a href="#/collections/${enc(name)}/documents/${enc(d.id)}">${esc(d.id)}</a></td>
          <td>${stateBadge(d.state)}${d.error ? ` <span class="bad">${esc(d.error)}</span>` : ""}</td>
          <td class="num">${fmt(d.chunks)}</td><td class="num">${fmt(d.bytes)}</td><td>${when(d.accepted_at)}</td></tr>`,
        )
        .join("")}</tbody>
    </table></div>
    ${docs.next ? `<p><a href="#/collections/${enc(name)}?after=${enc(docs.next)}">Next page</a></p>` : ""}`;
  if (writer) wireUpload(name, alive);
}

function stateBadge(state) {
  const cls = { indexed: "ok", completed: "ok", failed: "bad", completed_with_errors: "warn", cancelled: "warn" }[state] || "muted";
  return `<span class="badge ${cls}">${esc(state)}</span>`;
}

function wireUpload(name, alive) {
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  const send = (files) => {
    if (!files || files.length === 0) return;
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    const out = document.getElementById("upload-progress");
    out.innerHTML = `<p>Uploading ${files.length} file(s)…</p>`;
    guarded(async () => {
      let accepted;
      try {
        accepted = await api("POST", `/api/v1/collections/${enc(name)}/documents`, form);
      } catch (e) {
        out.innerHTML = `<p class="bad">The upload failed: ${esc(e.message)}</p>`;
        throw e;
      }
      await followJob(accepted.job_id, out, alive);
      if (!alive()) return;
      // the collection as it is now, with the job's outcome kept in view
      const outcome = out.innerHTML;
      await viewCollection(name, null);
      const progress = document.getElementById("upload-progress");
      if (progress) progress.innerHTML = outcome;
    });
  };
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // choosing the same file again is a change
    send(files);
  });
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    send(ev.dataTransfer.files);
  });
}

/** Show a job's progress until it has finished (or the page is left). */
async function followJob(id, out, alive) {
  while (alive()) {
    const j = await api("GET", `/api/v1/jobs/${enc(id)}`);
    const done = j.indexed + j.failed + (j.superseded || 0);
    out.innerHTML = `
      <p>Job <code>${esc(j.id)}</code>: ${stateBadge(j.state)} ${fmt(done)} of ${fmt(j.total)} documents (${fmt(j.indexed)} indexed, ${fmt(j.failed)} failed)</p>
      <progress max="${esc(Math.max(j.total, 1))}" value="${esc(done)}" aria-label="Documents done">${esc(done)}</progress>
      ${j.errors.length ? `<ul>${j.errors.map((e) => `<li><strong>${esc(e.document_id)}</strong>: <span class="bad">${esc(e.reason)}</span></li>`).join("")}</ul>` : ""}`;
    if (j.state !== "running") return j;
    await new Promise((r) => setTimeout(r, 500));
  }
  return null;
}

async function viewDocument(name, id) {
  const alive = live();
  const d = await api("GET", `/api/v1/collections/${enc(name)}/documents/${enc(id)}`);
  if (!alive()) return;
  main.innerHTML = `
    <p><a href="#/collections">Collections</a> › <a href="#/collections/${enc(name)}">${esc(name)}</a> › ${esc(id)}</p>
    <h1>${esc(id)}</h1>
    <p>${stateBadge(d.state)} version ${fmt(d.version)} · job <code>${esc(d.job_id)}</code> · ${fmt(d.chunks)} chunks
      ${d.error ? `<br><span class="bad">${esc(d.error)}</span>` : ""}</p>
    ${d.state === "failed" && canWrite() ? `<p><button type="button" class="retry" data-collection="${esc(name)}" data-id="${esc(d.id)}">Retry this document</button></p><div class="retry-progress" aria-live="polite"></div>` : ""}
    <h2>Metadata</h2><pre>${esc(JSON.stringify(d.metadata, null, 2))}</pre>
    <h2>Chunks</h2>
    <div class="table-wrap"><table>
      <thead><tr><th class="num">#</th><th>Pages</th><th>Section</th><th>Bytes</th><th>Text</th></tr></thead>
      <tbody>${(d.chunk_list || [])
        .map(
          (c) => `<tr><td class="num">${esc(c.chunk_index)}</td><td>${c.page != null ? `${esc(c.page)}${c.last_page !== c.page ? `–${esc(c.last_page)}` : ""}` : "–"}</td><td>${esc(c.section || "–")}</td>
          <td>${esc(c.start)}–${esc(c.end)}</td><td>${esc(c.text)}</td></tr>`,
        )
        .join("")}</tbody>
    </table></div>`;
  wireRetries(alive);
}

function canWrite() {
  return me && (me.role === "admin" || me.role === "writer");
}

/** Retry buttons: accept a failed document again and follow the new job beside the button. */
function wireRetries(alive) {
  for (const button of main.querySelectorAll("button.retry")) {
    button.addEventListener("click", () => {
      const next = button.parentElement.nextElementSibling;
      let out = next && next.classList.contains("retry-progress") ? next : button.parentElement.querySelector(".retry-progress");
      if (!out) {
        out = document.createElement("div");
        out.className = "retry-progress";
        button.parentElement.append(out);
      }
      button.disabled = true;
      guarded(async () => {
        try {
          const accepted = await api("POST", `/api/v1/collections/${enc(button.dataset.collection)}/documents/${enc(button.dataset.id)}/retry`);
          await followJob(accepted.job_id, out, alive);
          // the page as it is now (the document's new state, the new job)
          if (alive()) route();
        } catch (e) {
          if (e instanceof ApiError && e.status === 404)
            throw new Error(`${e.message} (a file that could not be read has no text to retry: upload it again)`);
          throw e;
        } finally {
          button.disabled = false;
        }
      });
    });
  }
}

// ---------------------------------------------------------------- jobs

async function viewJobs() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const state = params.get("state") || "";
  const offset = Number(params.get("offset")) || 0;
  const query = new URLSearchParams();
  if (state) query.set("state", state);
  if (offset) query.set("offset", String(offset));
  const alive = live();
  const list = await api("GET", `/api/v1/jobs?${query}`);
  if (!alive()) return;
  const states = ["", "running", "completed", "completed_with_errors", "failed", "cancelled"];
  main.innerHTML = `
    <h1>Jobs</h1>
    <form class="grid" id="jobs-form"><label>State
      <select name="state">${states.map((s) => `<option value="${s}"${s === state ? " selected" : ""}>${s || "all"}</option>`).join("")}</select>
    </label></form>
    <div class="table-wrap"><table>
      <thead><tr><th>Job</th><th>Collection</th><th>State</th><th class="num">Total</th><th class="num">Indexed</th><th class="num">Failed</th><th>Started</th><th>Reasons</th></tr></thead>
      <tbody>${list.jobs
        .map(
          (j) => `<tr><td><code>${esc(j.id)}</code></td><td><a href="#/collections/${enc(j.collection)}">${esc(j.collection)}</a></td><td>${stateBadge(j.state)}</td>
          <td class="num">${fmt(j.total)}</td><td class="num">${fmt(j.indexed)}</td><td class="num">${fmt(j.failed)}</td><td>${when(j.created_at)}</td>
          <td>${j.errors.length ? `<details><summary>${j.errors.length} failed</summary><ul>${j.errors.map((e) => `<li><p><strong>${esc(e.document_id)}</strong>: ${esc(e.reason)}${canWrite() ? ` <button type="button" class="retry plain" data-collection="${esc(j.collection)}" data-id="${esc(e.document_id)}">Retry</button>` : ""}</p></li>`).join("")}</ul></details>` : ""}</td></tr>`,
        )
        .join("")}</tbody>
    </table></div>`;
  if (list.next != null) {
    const next = new URLSearchParams(query);
    next.set("offset", String(list.next));
    main.insertAdjacentHTML("beforeend", `<p><a href="#/jobs?${esc(next.toString())}">Older jobs</a></p>`);
  }
  wireRetries(alive);
  document.querySelector("#jobs-form select").addEventListener("change", (ev) => {
    location.hash = ev.target.value ? `#/jobs?state=${enc(ev.target.value)}` : "#/jobs";
  });
  // while jobs run, the page follows them, redrawn in place; not while the user is busy on it
  // (a retry under way, reasons opened, the focus on one of its controls)
  if (list.jobs.some((j) => j.state === "running")) {
    const follow = () =>
      setTimeout(() => {
        if (!alive()) return;
        const focused = document.activeElement !== main && main.contains(document.activeElement);
        if (focused || main.querySelector(".retry-progress:not(:empty), details[open]")) follow();
        else
          guarded(async () => {
            await viewJobs();
            return true;
          }).then((drawn) => {
            if (!drawn) follow(); // a failed redraw is said once; the next one may work
          });
      }, 2000);
    follow();
  }
}

// ---------------------------------------------------------------- cluster

// Each node's samples, oldest first, over the last CHART_SPAN_MS: {t, rps, p95} where t is the
// server's time (ms since the epoch, the `until` of the answer that gave it: the browser's clock
// is never used, so a browser whose clock is off draws the same chart) and p95 is null for a
// sample without searches (no latency to draw, which is not a latency of 0).
const history = new Map();
const CHART_SPAN_MS = 5 * 60 * 1000;

/** The last five minutes of each node's searches, as the nodes recorded them (10 s intervals),
 * put before the samples taken since the page opened: the chart starts full on a page just
 * loaded. */
async function loadHistory(alive) {
  const past = await api("GET", "/api/v1/analytics/searches?since=5m&step=10s").catch(() => null);
  if (!past || !past.step_ms || !alive()) return 0;
  for (const [id, l] of Object.entries(past.by_node || {})) {
    if (!l.series) continue;
    const live = history.get(id) || [];
    const first = live.length ? live[0].t : Infinity;
    const earlier = l.series
      .map((i) => ({ t: Math.min(i.start + past.step_ms, past.until), rps: i.searches_per_second, p95: i.p95_ms > 0 ? i.p95_ms : null }))
      .filter((p) => p.t < first);
    history.set(id, [...earlier, ...live]);
  }
  return past.until;
}

function sparkline(all, key, now) {
  const points = all.filter((p) => p[key] != null);
  if (points.length < 2) return `<svg class="chart" role="img" aria-label="not enough samples yet"></svg>`;
  const max = Math.max(...points.map((p) => p[key]));
  const scale = max > 0 ? max : 1;
  const from = (now || points[points.length - 1].t) - CHART_SPAN_MS;
  const xy = points.map((p) => `${(Math.max(0, p.t - from) / CHART_SPAN_MS) * 300},${58 - (p[key] / scale) * 54}`).join(" ");
  return `<svg class="chart" viewBox="0 0 300 60" preserveAspectRatio="none" role="img" data-points="${points.length}" data-from="${esc(points[0].t)}" data-max="${esc(max)}" data-now="${esc(from + CHART_SPAN_MS)}" aria-label="${key} over the last 5 minutes, up to ${fmt(max, 2)}"><polyline class="${key}" points="${xy}"/></svg>`;
}

async function viewCluster() {
  const alive = live();
  main.innerHTML = `<h1>Cluster</h1><div id="cluster-body"><p data-loading>Loading…</p></div>`;
  // every member's record of the last minutes, beside the first draw (not before it: a member
  // that does not answer would hold the page for the seconds the node waits for it)
  let now = 0; // the server's time at the newest answer
  history.clear(); // what an earlier visit drew has a gap since: the nodes' record fills it
  loadHistory(alive).then((until) => {
    now = Math.max(now, until);
  });
  const draw = async () => {
    const [c, load, actors] = await Promise.all([
      api("GET", "/api/v1/cluster"),
      api("GET", "/api/v1/analytics/searches?since=10s").catch(() => null),
      api("GET", "/api/v1/admin/actors").catch(() => null),
    ]);
    if (!alive()) return;
    const answered = (load && load.by_node) || {};
    // members the analytics answer could not ask (when it failed as a whole, nobody is blamed)
    const silent = new Set(((load && load.missing_nodes) || []).map(String));
    if (load) now = Math.max(now, load.until);
    for (const [id, l] of Object.entries(answered)) {
      const h = history.get(id) || [];
      h.push({ t: load.until, rps: l.searches_per_second, p95: l.p95_ms > 0 ? l.p95_ms : null });
      history.set(id, h);
    }
    // a member that did not answer gets no sample, and its old ones age out like the others
    for (const [id, h] of history) {
      const kept = h.filter((p) => p.t >= now - CHART_SPAN_MS);
      if (kept.length) history.set(id, kept);
      else history.delete(id);
    }
    const row = (m) => {
      const s = m.status || {};
      const here = c.this_node === m.id;
      // what the member says it is; a member that cannot be asked is named by its membership
      const role = m.id === c.leader ? "leader" : m.role === "learner" ? "learner" : s.state || m.role;
      const health = m.error ? `<span class="bad">unreachable: ${esc(m.error)}</span>` : s.stale ? `<span class="warn">stale: ${esc(s.stale)}</span>` : `<span class="ok">healthy</span>`;
      return `<tr${here ? ' aria-current="true"' : ""}><td>${esc(m.id)}${here ? " <strong>(this node)</strong>" : ""}</td><td><code>${esc(m.addr)}</code></td>
        <td><span class="badge ${role === "leader" ? "ok" : "muted"}" data-role="${esc(role)}">${esc(role)}</span></td><td class="num">${fmt(s.term)}</td>
        <td class="num">${fmt(s.commit_index)}</td><td class="num">${fmt(s.applied_index)}</td><td class="num">${fmt(m.lag)}</td>
        <td class="num${s.actor_restarts ? " warn" : ""}" data-restarts="${esc(s.actor_restarts ?? "")}">${fmt(s.actor_restarts)}</td><td>${health}</td></tr>`;
    };
    const charts = [...history.entries()]
      .map(([id, h]) => {
        const last = h[h.length - 1];
        const current = !silent.has(id)
          ? `<div>searches/s <strong>${fmt(last.rps, 2)}</strong></div>${sparkline(h, "rps", now)}
        <div>p95 <strong>${last.p95 == null ? "no searches" : `${fmt(last.p95, 1)} ms`}</strong></div>${sparkline(h, "p95", now)}`
          : `<div class="warn">No answer now: what it recorded before.</div>${sparkline(h, "rps", now)}${sparkline(h, "p95", now)}`;
        return `<div class="card" data-node="${esc(id)}"><h3>Node ${esc(id)}</h3>${current}</div>`;
      })
      .join("");
    document.getElementById("cluster-body").innerHTML = `
      <p>Cluster <code>${esc(c.cluster_id || "not initialised")}</code> · term ${fmt(c.term)} · leader <strong id="leader">${esc(c.leader ?? "none")}</strong></p>
      <div class="table-wrap"><table>
        <thead><tr><th>Node</th><th>Address</th><th>Role</th><th class="num">Term</th><th class="num">Commit</th><th class="num">Applied</th><th class="num">Lag</th><th class="num">Actor restarts</th><th>Health</th></tr></thead>
        <tbody>${c.members.map(row).join("")}</tbody>
      </table></div>
      <h2>Searches per node, the last 5 minutes</h2>
      <p class="muted">As each node recorded them (10 s intervals), then the last 10 s every 2 s while this page is open.</p>
      <div class="cards">${charts || "<p class='muted'>No samples yet.</p>"}</div>
      <h2>This node's actors</h2>
      ${
        actors
          ? `<div class="table-wrap"><table><thead><tr><th>Actor</th><th>Kind</th><th class="num">Restarts</th><th class="num">Up for</th></tr></thead>
        <tbody>${actors.actors
          .map((a) => `<tr><td>${esc(a.name)}</td><td>${esc(a.kind)}</td><td class="num${a.restarts ? " warn" : ""}">${fmt(a.restarts)}</td><td class="num">${fmt(a.uptime_s)} s</td></tr>`)
          .join("")}</tbody></table></div>`
          : "<p class='muted'>Not available to this credential.</p>"
      }`;
  };
  try {
    await draw();
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      document.getElementById("cluster-body").innerHTML = "<p>The cluster view needs an admin's credential.</p>";
      return;
    }
    throw e;
  }
  // a refresh that fails leaves the last view with a line saying since when it is old (not a new
  // message every 2 s); a lost credential still goes to the sign-in page
  let lastDrawn = new Date();
  const tick = async () => {
    if (!alive()) return;
    const ok = await guarded(async () => {
      try {
        await draw();
        lastDrawn = new Date();
        return true;
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) throw e;
        const body = document.getElementById("cluster-body");
        if (alive() && body) {
          let line = document.getElementById("cluster-stale");
          if (!line) {
            body.insertAdjacentHTML("afterbegin", `<p id="cluster-stale" class="warn" role="status"></p>`);
            line = document.getElementById("cluster-stale");
          }
          line.textContent = `Not refreshed since ${lastDrawn.toLocaleTimeString()}: ${e.message}`;
        }
        return true;
      }
    });
    if (ok && alive()) setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// ---------------------------------------------------------------- routing

async function route() {
  view += 1;
  const hash = location.hash || "#/search";
  const [path] = hash.slice(1).split("?");
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = ["not-found"];
  }
  const page = parts[0] || "search";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (page === "signin") {
    viewSignIn();
    return;
  }
  if (!me && !(await guarded(whoAmI))) {
    viewSignIn();
    return;
  }
  main.innerHTML = "<p data-loading>Loading…</p>";
  const shown = view;
  let failed = null;
  await guarded(async () => {
    try {
      await showPage(page, parts, hash);
    } catch (e) {
      failed = e;
      throw e;
    }
  });
  // a page whose first request failed says so where it would have been (a lost credential has
  // gone to the sign-in page already)
  const still = shown === view && (location.hash || "#/search") === hash;
  if (failed && still && main.querySelector("[data-loading]")) {
    main.innerHTML = `<h1>This page could not be shown</h1><p class="bad">${esc(failed.message)}</p><p><button type="button" id="reload-page">Try again</button></p>`;
    document.getElementById("reload-page").addEventListener("click", route);
  }
  // a page that put the focus on one of its fields keeps it there
  if (still && !main.contains(document.activeElement)) main.focus();
}

async function showPage(page, parts, hash) {
  if (page === "search") await viewSearch();
  else if (page === "collections" && parts.length === 1) await viewCollections();
  else if (page === "collections" && parts.length === 2) {
    const after = new URLSearchParams(hash.split("?")[1] || "").get("after");
    await viewCollection(parts[1], after);
  } else if (page === "collections" && parts[2] === "documents") await viewDocument(parts[1], parts.slice(3).join("/"));
  else if (page === "jobs") await viewJobs();
  else if (page === "cluster") await viewCluster();
  else main.innerHTML = `<h1>Not found</h1><p>No such page: <code>${esc(hash)}</code>.</p>`;
}

window.addEventListener("hashchange", route);
// the skip link moves the focus to the page's content (its #main is not a page of the console)
document.querySelector("a.skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});
// a file dropped beside the drop zone is not opened in place of the console
window.addEventListener("dragover", (ev) => ev.preventDefault());
window.addEventListener("drop", (ev) => ev.preventDefault());
route();
