/* SafeSpot page: plain JavaScript, no framework, no build step, no network but this server.
 *
 * Filter view: POST v1/filter (multipart `image` + preset/norm/eps), poll v1/jobs/{id},
 * fetch v1/jobs/{id}/image (with the API key, hence fetch + blob URLs rather than <img src>),
 * then show original / filtered / amplified difference (computed here in a canvas) and the scores.
 * Admin view: GET v1/checkpoints, POST v1/checkpoints/{id}/activate with an admin key.
 *
 * URLs are relative to the page, so the page also works behind a path prefix.
 * document.body.dataset.state says where the filter is: idle, uploading, running, done, error.
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const API = {
    filter: "v1/filter",
    job: (id) => `v1/jobs/${encodeURIComponent(id)}`,
    image: (id) => `v1/jobs/${encodeURIComponent(id)}/image`,
    checkpoints: "v1/checkpoints",
    activate: (id) => `v1/checkpoints/${encodeURIComponent(id)}/activate`,
  };
  const API_KEY_STORE = "safespot.apiKey"; // localStorage: survives restarts, per the brief
  const ADMIN_KEY_STORE = "safespot.adminKey"; // sessionStorage: this tab only
  const TERMINAL = new Set(["finished", "failed", "canceled", "expired"]);
  // The server's default bounds (SAFESPOT_MAX_EPS_LINF / _L2); the server checks the real ones.
  const DEFAULT_LIMIT = { linf: 16 / 255, l2: 2.0 };
  const DEFAULT_EPS = { linf: "8/255", l2: "0.5" };
  const LEVELS = 255;
  const MAX_AUTO_AMP = 50;
  const AUTO_SPAN = 80; // auto amplification maps the largest change to 128 ± 80 (no clipping)
  const POLL_MS = { first: 150, max: 1000, growth: 1.5 };
  const TRANSIENT_RETRIES = 5; // poll errors (network, 503) tolerated in a row

  const state = { file: null, run: 0, urls: [], result: null, pixels: null, ckptTimer: 0 };

  // ------------------------------------------------------------------ errors
  class ApiError extends Error {
    constructor(status, code, message, retryAfter = null) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  /** What the user can do about an error, by HTTP status (0: no answer at all). */
  function advice(err, admin) {
    switch (err.status) {
      case 0: return "Check that the SafeSpot server is running and reachable, then try again.";
      case 400: return "The file could not be read as an image. Re-save it (or export it again) and retry.";
      case 401: return admin ? "Enter a valid admin key above." : "Enter a valid key under “API key” and submit again.";
      case 403: return admin ? "This needs an admin key (SAFESPOT_ADMIN_KEYS on the server)." : "This key may not do that.";
      case 404: return "It is unknown or has expired: submit the image again.";
      case 409: return admin ? "Only a ready (validated and vetted) checkpoint can be activated." : "Wait for the job to finish.";
      case 413: return "The image is too large (file size or pixel count). Resize or compress it and retry.";
      case 415: return "Use a JPEG, PNG, WebP, GIF, BMP or TIFF image.";
      case 422: return "Check the settings: preset, threat model and eps (within the server's limits).";
      case 429: return `The queue is full. Try again${err.retryAfter ? ` in about ${err.retryAfter} s` : " shortly"}.`;
      case 503: return "No worker is ready (a model may still be loading). Try again in a moment.";
      default: return err.status >= 500 ? "The server failed. Try again; if it persists, tell the operator (the message above helps)." : "";
    }
  }

  function showError(box, err, title, admin = false) {
    box.replaceChildren();
    const head = document.createElement("strong");
    const where = err.status ? ` (${err.status} ${err.code})` : err.code ? ` (${err.code})` : "";
    head.textContent = `${title}${where}`;
    const message = document.createElement("p");
    message.textContent = err.message || "unknown error";
    box.append(head, message);
    const hint = err.hint || advice(err, admin);
    if (hint) {
      const p = document.createElement("p");
      p.textContent = hint;
      box.append(p);
    }
    box.hidden = false;
  }

  function hideError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  // --------------------------------------------------------------------- api
  async function api(path, { method = "GET", body = undefined, key = "", as = "json" } = {}) {
    const headers = {};
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(path, { method, body, headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "network_error", `the server could not be reached (${e.message})`);
    }
    if (!res.ok) throw await errorOf(res);
    return as === "blob" ? res.blob() : res.json();
  }

  async function errorOf(res) {
    let code = `http_${res.status}`;
    let message = res.statusText || "request failed";
    try {
      const body = await res.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (_) { /* not JSON (a proxy's HTML page): keep the status text */ }
    return new ApiError(res.status, code, message, res.headers.get("Retry-After"));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -------------------------------------------------------------- formatting
  const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "n/a" : Number(x).toFixed(digits));
  const pct = (x) => (x === null || x === undefined ? "n/a" : `${(100 * x).toFixed(1)}%`);
  const secs = (x) => (x === null || x === undefined ? "n/a" : `${Number(x).toFixed(x < 10 ? 2 : 1)} s`);
  const short = (sha) => (sha ? String(sha).slice(0, 12) : "n/a");

  function safeName(name) {
    const base = (name || "image").replace(/\.[^./\\]*$/, "") || "image";
    return `${base}.safe.png`;
  }

  function humanBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (v !== undefined && v !== null) node.setAttribute(k, v);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  // --------------------------------------------------------------------- tabs
  function selectTab(name, focus = false) {
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      const on = tab.id === `tab-${name}`;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !on;
      if (on && focus) tab.focus();
    }
    if (name === "admin" && $("admin-key").value && !$("ckpt-table").dataset.loaded) loadCheckpoints();
  }

  function initTabs() {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => {
        const name = tab.id.replace("tab-", "");
        history.replaceState(null, "", name === "filter" ? location.pathname : `#${name}`);
        selectTab(name);
      });
      tab.addEventListener("keydown", (e) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
        if (!step) return;
        e.preventDefault();
        tabs[(i + step + tabs.length) % tabs.length].click();
        tabs[(i + step + tabs.length) % tabs.length].focus();
      });
    });
    const fromHash = () => selectTab(location.hash === "#admin" ? "admin" : "filter");
    window.addEventListener("hashchange", fromHash); // links to #admin, back and forward
    fromHash();
  }

  // ------------------------------------------------------------------- input
  function setFile(file) {
    if (!file) return;
    state.file = file;
    $("drop-text").textContent = `${file.name || "pasted image"} (${humanBytes(file.size)})`;
    $("drop-hint").textContent = "Drop or choose another image to replace it";
    const thumb = $("thumb");
    const url = URL.createObjectURL(file);
    if (thumb.dataset.url) URL.revokeObjectURL(thumb.dataset.url);
    thumb.dataset.url = url;
    thumb.onerror = () => { thumb.hidden = true; }; // e.g. TIFF: the server reads it, browsers do not
    thumb.src = url;
    thumb.hidden = false;
    updateFormState();
  }

  function initDrop() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
    }
    for (const type of ["dragleave", "dragend"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
      if (e.dataTransfer && e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
    });
    // A file dropped next to the zone must not make the browser navigate away from the page.
    for (const type of ["dragover", "drop"]) document.addEventListener(type, (e) => e.preventDefault());
    document.addEventListener("paste", (e) => {
      const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
      if (file) setFile(file);
    });
  }

  /** "8/255" or "0.0314" -> number; NaN when it is neither. */
  function parseBudget(raw) {
    const text = String(raw).trim();
    if (!text) return NaN;
    if (text.includes("/")) {
      const [a, b, extra] = text.split("/");
      if (extra !== undefined) return NaN;
      const num = Number(a), den = Number(b);
      return den ? num / den : NaN;
    }
    return Number(text);
  }

  function epsState() {
    const norm = $("norm").value;
    const value = parseBudget($("eps").value);
    const limit = DEFAULT_LIMIT[norm];
    const valid = Number.isFinite(value) && value > 0;
    return { norm, value, limit, valid };
  }

  function updateEpsHint() {
    const { norm, value, limit, valid } = epsState();
    const hint = $("eps-hint");
    const limitText = norm === "linf" ? `${Math.round(limit * LEVELS)}/255` : `${limit}`;
    if (!valid) {
      hint.textContent = "Enter a positive number such as 0.0314 or 8/255.";
    } else if (norm === "linf") {
      hint.textContent = `= ${value.toFixed(4)}, ${(value * LEVELS).toFixed(1)} of 255 levels per pixel (default limit ${limitText}).`;
    } else {
      hint.textContent = `= ${value.toFixed(3)} in [0,1] units over all pixels (default limit ${limitText}).`;
    }
    if (valid && value > limit) hint.textContent += " Above the default limit: the server may refuse it.";
    hint.classList.toggle("invalid", !valid);
    $("eps").setAttribute("aria-invalid", String(!valid));
    updateFormState();
  }

  function updateFormState() {
    const busy = ["uploading", "running"].includes(document.body.dataset.state);
    const ready = state.file && epsState().valid && !busy;
    $("submit").disabled = !ready;
    $("form-hint").textContent = busy ? "" : !state.file ? "Choose an image first." : !epsState().valid ? "Fix eps first." : "";
  }

  function initOptions() {
    $("norm").addEventListener("change", () => {
      const eps = $("eps");
      const other = $("norm").value === "linf" ? "l2" : "linf";
      if (eps.value.trim() === DEFAULT_EPS[other] || !eps.value.trim()) eps.value = DEFAULT_EPS[$("norm").value];
      updateEpsHint();
    });
    $("eps").addEventListener("input", updateEpsHint);
    const key = $("api-key");
    key.value = localStorage.getItem(API_KEY_STORE) || "";
    if (key.value) $("key-box").open = true;
    key.addEventListener("change", () => {
      if (key.value) localStorage.setItem(API_KEY_STORE, key.value.trim());
      else localStorage.removeItem(API_KEY_STORE);
    });
    $("forget-key").addEventListener("click", () => {
      key.value = "";
      localStorage.removeItem(API_KEY_STORE);
      key.focus();
    });
    updateEpsHint();
  }

  // ------------------------------------------------------------------ filter
  function setPhase(phase) {
    document.body.dataset.state = phase;
    updateFormState();
  }

  function showProgress(text, fraction = null) {
    $("progress-box").hidden = false;
    const bar = $("progress");
    if (fraction === null) bar.removeAttribute("value"); // indeterminate
    else bar.value = Math.max(0, Math.min(1, fraction));
    $("progress-text").textContent = text;
  }

  function describeProgress(job, startedAt) {
    const p = job.progress || {};
    const elapsed = ((performance.now() - startedAt) / 1000).toFixed(1);
    switch (p.phase || job.status) {
      case "queued": return [`Queued, waiting for a worker… ${elapsed} s`, null];
      case "searching": {
        const bits = [`Searching for a safe spot… ${Math.round(100 * (p.fraction || 0))}%`];
        if (p.grad_evals) bits.push(`${p.grad_evals} passes`);
        if (p.batch_size > 1) bits.push(`batched with ${p.batch_size - 1} other image${p.batch_size > 2 ? "s" : ""}`);
        bits.push(`${elapsed} s`);
        return [bits.join(" · "), p.fraction || 0];
      }
      case "encoding": return [`Encoding the PNG… ${elapsed} s`, 0.99];
      case "done": case "finished": return ["Done", 1];
      default: return [`${job.status}… ${elapsed} s`, p.fraction ?? null];
    }
  }

  async function pollJob(job, token, key) {
    const startedAt = performance.now();
    let delay = POLL_MS.first;
    let failures = 0;
    while (!TERMINAL.has(job.status)) {
      showProgress(...describeProgress(job, startedAt));
      await sleep(delay);
      delay = Math.min(POLL_MS.max, delay * POLL_MS.growth);
      if (token !== state.run) return null; // a newer submission took over
      try {
        job = await api(API.job(job.job_id), { key });
        failures = 0;
      } catch (err) {
        if ((err.status === 0 || err.status === 503) && ++failures <= TRANSIENT_RETRIES) continue;
        throw err;
      }
    }
    if (job.status === "failed") {
      const e = job.error || {};
      const err = new ApiError(null, e.code || "job_failed", e.message || "the job failed");
      err.hint = "Try again; a different preset or a smaller image may help. If it persists, tell the operator.";
      throw err;
    }
    if (job.status !== "finished") {
      const err = new ApiError(null, `job_${job.status}`, `the job ended as ${job.status}`);
      err.hint = "Submit the image again.";
      throw err;
    }
    showProgress("Done: fetching the filtered image…", 1);
    return job;
  }

  async function submitFilter(event) {
    event.preventDefault();
    if (!state.file || !epsState().valid) return;
    const token = ++state.run;
    const key = $("api-key").value.trim();
    hideError($("error"));
    $("results").hidden = true;
    setPhase("uploading");
    showProgress("Uploading…", null);

    const form = new FormData();
    form.append("image", state.file, state.file.name || "image");
    form.append("preset", $("preset").value);
    form.append("norm", $("norm").value);
    form.append("eps", $("eps").value.trim());
    try {
      let job = await api(API.filter, { method: "POST", body: form, key });
      setPhase("running");
      job = await pollJob(job, token, key);
      if (!job) return;
      const png = await api(API.image(job.job_id), { key, as: "blob" });
      if (token !== state.run) return;
      await showResult(job, png);
      $("progress-box").hidden = true;
      setPhase("done");
    } catch (err) {
      if (token !== state.run) return;
      $("progress-box").hidden = true;
      const title = err.status === null ? "Filtering failed"
        : err.status === 0 ? "No answer from the server" : "The server refused the request";
      showError($("error"), err, title);
      setPhase("error");
      $("error").focus?.();
    }
  }

  // ----------------------------------------------------------------- results
  function blobUrl(blob) {
    const url = URL.createObjectURL(blob);
    state.urls.push(url);
    return url;
  }

  function loadImage(img, src) {
    return new Promise((resolve) => {
      img.onload = () => resolve(true);
      img.onerror = () => resolve(false);
      img.src = src;
    });
  }

  function pixelsOf(img) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, canvas.width, canvas.height);
  }

  /** Largest per-channel difference, in 8-bit levels (colour channels only, alpha ignored). */
  function maxDiff(a, b) {
    let max = 0;
    const pa = a.data, pb = b.data;
    for (let i = 0; i < pa.length; i += 4) {
      for (let c = 0; c < 3; c++) {
        const d = Math.abs(pa[i + c] - pb[i + c]);
        if (d > max) max = d;
      }
    }
    return max;
  }

  /** A grey image (128 = unchanged) showing amp x (filtered - original), per channel. */
  function diffImage(original, filtered, amp) {
    const out = new ImageData(original.width, original.height);
    const po = original.data, pf = filtered.data, pd = out.data;
    for (let i = 0; i < po.length; i += 4) {
      for (let c = 0; c < 3; c++) pd[i + c] = 128 + amp * (pf[i + c] - po[i + c]); // Uint8Clamped clips
      pd[i + 3] = 255;
    }
    const canvas = document.createElement("canvas");
    canvas.width = out.width;
    canvas.height = out.height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function renderDiff() {
    const px = state.pixels;
    const img = $("img-diff");
    if (!px) return;
    const choice = $("amp").value;
    const amp = choice === "auto" ? (px.max ? Math.max(1, Math.min(MAX_AUTO_AMP, Math.floor(AUTO_SPAN / px.max))) : 1) : Number(choice);
    const blob = await diffImage(px.original, px.filtered, amp);
    await loadImage(img, blobUrl(blob));
    img.dataset.amplification = String(amp);
    img.dataset.maxDiff = String(px.max);
    $("amp-text").textContent = `amplified ×${amp}`;
    img.alt = px.max
      ? `The change made by the filter, amplified ${amp} times around mid-grey; the largest change is ${px.max} of 255 levels`
      : "No pixel changed: the original already was a safe spot (uniform grey)";
  }

  async function showResult(job, png) {
    for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
    const r = job.result;
    state.result = r;
    state.pixels = null;
    const imgO = $("img-original"), imgF = $("img-filtered"), imgD = $("img-diff");
    const [okO, okF] = await Promise.all([loadImage(imgO, blobUrl(state.file)), loadImage(imgF, blobUrl(png))]);
    $("size-original").textContent = okO ? `${imgO.naturalWidth}×${imgO.naturalHeight}` : "(this browser cannot show this format)";
    $("size-filtered").textContent = okF ? `${imgF.naturalWidth}×${imgF.naturalHeight} PNG` : "";
    const note = $("diff-note");
    note.textContent = "Mid-grey means unchanged; lighter and darker pixels show where the filter added or removed intensity, per colour channel.";
    if (okO && okF && imgO.naturalWidth === imgF.naturalWidth && imgO.naturalHeight === imgF.naturalHeight) {
      const original = pixelsOf(imgO), filtered = pixelsOf(imgF);
      state.pixels = { original, filtered, max: maxDiff(original, filtered) };
      const reported = Math.round((r.linf || 0) * LEVELS);
      if (state.pixels.max !== reported) {
        note.textContent += ` This browser decodes the original a little differently from the server (colour profile or decoder): its largest difference is ${state.pixels.max} levels where the server measured ${reported}.`;
      } else if (!state.pixels.max) {
        note.textContent = "No pixel changed: the original already was a safe spot for this model and budget.";
      }
      await renderDiff();
    } else {
      imgD.removeAttribute("src");
      $("amp-text").textContent = "not available";
      note.textContent = okO ? "The images differ in size, so no difference image is shown." : "This browser cannot display the original's format, so no difference image is shown.";
    }
    const link = $("download");
    link.href = imgF.src;
    link.download = safeName(state.file.name);
    link.textContent = `Download ${link.download}`;
    renderScores(r);
    $("raw-json").textContent = JSON.stringify(job, null, 2);
    $("results").hidden = false;
    $("results-title").focus?.();
  }

  function score(label, value, sub = null, badge = null, title = null) {
    const dd = el("dd", { title });
    if (badge) dd.append(el("span", { class: `badge ${badge[1]}`, text: badge[0] }), value ? " " : "");
    if (value) dd.append(value);
    if (sub) dd.append(el("span", { class: "sub", text: sub }));
    return el("div", {}, el("dt", { text: label }), dd);
  }

  function renderScores(r) {
    const list = $("scores");
    const p = r.prediction || {}, rob = r.robustness || {}, t = r.threat || {}, m = r.model || {};
    const tm = r.timings || {}, img = r.image || {};
    const levels = Math.round((r.linf || 0) * LEVELS);
    const items = [
      score("Prediction", `${p.class_name ?? "?"}`, `class ${p.label} · ${pct(p.confidence)} confidence`),
      score("Safe spot found", "", r.safe_spot_found
        ? `the verification attacks failed on the output: ${r.verification?.summary || "not reported"}`
        : "best point found; it did not pass verification",
      r.safe_spot_found ? ["yes", "good"] : ["no", "bad"],
      r.verification?.guarantee || null),
      score("Robustness", `margin ${fmt(rob.margin, 3)}`,
        `confidence under attack ${pct(rob.confidence_under_attack)} · ${rob.attack || ""}`,
        rob.held ? ["held", "good"] : ["broken", "bad"]),
      score("PSNR", r.psnr === null || r.psnr === undefined ? "∞ dB" : `${fmt(r.psnr, 2)} dB`,
        r.psnr === null || r.psnr === undefined ? "identical to the original" : "vs the original; higher is closer"),
      score("L-inf", `${fmt(r.linf, 4)} (${levels}/255 levels)`,
        t.norm === "linf" ? `budget ${fmt(t.delta, 4)} (${Math.round((t.delta || 0) * LEVELS)}/255)` : "largest change of any pixel"),
      score("L2", fmt(r.l2, 3), t.norm === "l2" ? `budget ${fmt(t.delta, 3)}` : "over all pixels, [0,1] units"),
      score("OOD score", fmt(r.ood_score, 3), "low means unlike the model's training images",
        r.ood_flag === true ? ["out of distribution", "warn"] : r.ood_flag === false ? ["in distribution", "good"] : ["no threshold", ""]),
      score("Model", m.name || "n/a", `sha256 ${short(m.sha256)}${m.checkpoint_id ? ` · ${m.checkpoint_id}` : ""}`,
        null, m.sha256 || null),
      score("Preset", r.preset || "n/a", `${t.norm || "?"} eps ${fmt(t.eps, 4)}${t.delta !== t.eps ? `, delta ${fmt(t.delta, 4)}` : ""}`),
      score("Passes", String(r.grad_evals ?? "n/a"), "forward + backward passes of the search"),
      score("Time", secs(tm.total_s), `queued ${secs(tm.queued_s)} · search ${secs(tm.search_s)}`),
      score("Image", img.width ? `${img.width}×${img.height}` : "n/a", img.mode ? `mode ${img.mode}` : null),
    ];
    if (r.reencode) {
      const survives = r.reencode.survives;
      items.push(score("Re-encode", `${r.reencode.format || "jpeg"} q${r.reencode.quality ?? "?"}`, null,
        survives ? ["survives", "good"] : ["does not survive", "bad"]));
    }
    list.replaceChildren(...items);
  }

  // ------------------------------------------------------------------- admin
  function vettingCells(record) {
    const v = record.vetting;
    if (v && v.skipped) {
      return [el("td", { colspan: "3", class: "muted", text: `not vetted: ${v.skipped}` })];
    }
    if (!v || v.clean_acc === undefined) {
      const text = record.status === "validating" ? "vetting…"
        : record.source === "shipped" ? "shipped with the service: not vetted here" : "—";
      return [el("td", { colspan: "3", class: "muted", text })];
    }
    const title = `n = ${v.n ?? "?"} images${v.seconds ? `, ${v.seconds} s` : ""}${v.data ? `, ${v.data}` : ""}`;
    return [
      el("td", { class: "num", title, text: pct(v.clean_acc) }),
      el("td", { class: "num", title, text: pct(v.pgd_acc) }),
      el("td", { class: "num", title, text: pct(v.safe_spot_rate) }),
    ];
  }

  const STATUS_BADGE = { active: "good", ready: "", validating: "warn", rejected: "bad" };

  function checkpointRow(record) {
    const info = record.info || {};
    const name = record.name || record.id;
    const status = el("td", {}, el("span", { class: `badge ${STATUS_BADGE[record.status] ?? ""}`, text: record.status }));
    if (record.error) status.append(el("span", { class: "sub", text: `${record.error.code}: ${record.error.message}` }));
    const model = [info.arch, info.num_classes ? `${info.num_classes} classes` : null,
      Array.isArray(info.input_size) ? info.input_size.join("×") : null].filter(Boolean).join(" · ");
    const action = el("td", {});
    if (record.status === "ready") {
      const button = el("button", { type: "button", class: "primary", "aria-label": `Activate ${name}`, text: "Activate" });
      button.dataset.id = record.id;
      button.addEventListener("click", () => activate(record.id, name, button));
      action.append(button);
    } else if (record.status === "active") {
      action.append(el("span", { class: "muted", text: "serving" }));
    }
    const row = el("tr", {},
      el("td", {}, el("strong", { text: name }), el("span", { class: "sub", text: `${record.id}${record.source ? ` · ${record.source}` : ""}` })),
      status,
      el("td", {}, document.createTextNode(model || "—"), el("span", { class: "sub", title: record.sha256 || "", text: `sha256 ${short(record.sha256)}` })),
      ...vettingCells(record),
      action);
    row.dataset.id = record.id;
    row.dataset.status = record.status;
    return row;
  }

  async function loadCheckpoints() {
    const key = $("admin-key").value.trim();
    clearTimeout(state.ckptTimer);
    hideError($("admin-error"));
    if (!key) {
      showError($("admin-error"), new ApiError(401, "missing_key", "no admin key entered"), "Cannot list checkpoints", true);
      return;
    }
    sessionStorage.setItem(ADMIN_KEY_STORE, key);
    $("admin-status").textContent = "Loading…";
    try {
      const body = await api(API.checkpoints, { key });
      const rows = body.checkpoints.map(checkpointRow);
      $("ckpt-rows").replaceChildren(...rows);
      const table = $("ckpt-table");
      table.hidden = false;
      table.dataset.loaded = "1";
      const validating = body.checkpoints.filter((c) => c.status === "validating").length;
      $("admin-status").textContent = `${body.checkpoints.length} checkpoint${body.checkpoints.length === 1 ? "" : "s"}` +
        `${body.active ? `; active: ${body.active}` : ""}${validating ? `; ${validating} being vetted (refreshing)` : ""}.`;
      if (validating) state.ckptTimer = setTimeout(loadCheckpoints, 3000);
    } catch (err) {
      $("admin-status").textContent = "";
      showError($("admin-error"), err, "Cannot list checkpoints", true);
    }
  }

  async function activate(id, name, button) {
    const key = $("admin-key").value.trim();
    button.disabled = true;
    hideError($("admin-error"));
    $("admin-status").textContent = `Activating ${name}…`;
    try {
      await api(API.activate(id), { method: "POST", key });
      await loadCheckpoints();
      $("admin-status").textContent = `Activated ${name}. Workers switch to it between batches. ` + $("admin-status").textContent;
    } catch (err) {
      button.disabled = false;
      $("admin-status").textContent = "";
      showError($("admin-error"), err, `Cannot activate ${name}`, true);
    }
  }

  function initAdmin() {
    $("admin-key").value = sessionStorage.getItem(ADMIN_KEY_STORE) || "";
    $("admin-form").addEventListener("submit", (e) => { e.preventDefault(); loadCheckpoints(); });
  }

  // -------------------------------------------------------------------- main
  function init() {
    initDrop();
    initOptions();
    initAdmin();
    initTabs();
    $("filter-form").addEventListener("submit", submitFilter);
    $("amp").addEventListener("change", renderDiff);
    $("error").tabIndex = -1;
    $("results-title").tabIndex = -1;
    setPhase("idle");
  }

  init();
})();
