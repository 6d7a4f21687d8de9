/* SafeSpot page: plain JavaScript modules, no framework, no build step, no network but this server.
 *
 * Filter view (this file): POST v1/filter (multipart `image` + preset/norm/eps), poll v1/jobs/{id},
 * fetch v1/jobs/{id}/image (with the API key, hence fetch + blob URLs rather than <img src>),
 * then results.js shows original / filtered / amplified difference and the scores; model.js shows
 * the active model's classes (GET v1/model).
 * Admin view: admin.js (checkpoints: upload, vetting figures, activate, delete) and training.js.
 * Shared helpers: common.js.
 *
 * URLs are relative to the page, so the page also works behind a path prefix.
 * document.body.dataset.state says where the filter is: idle, uploading, running, done, error.
 */
import { adminShown, initAdmin } from "./admin.js";
import { $, ApiError, api, hideError, humanBytes, LEVELS, parseBudget, showError, sleep, wireDropZone } from "./common.js";
import { budgetText, loadModel } from "./model.js";
import { initResults, showResult } from "./results.js";

const API = {
  filter: "v1/filter",
  job: (id) => `v1/jobs/${encodeURIComponent(id)}`,
  image: (id) => `v1/jobs/${encodeURIComponent(id)}/image`,
};
const API_KEY_STORE = "safespot.apiKey"; // localStorage: survives restarts, per the brief
const TERMINAL = new Set(["finished", "failed", "canceled", "expired"]);
// The server's default bounds (SAFESPOT_MAX_EPS_LINF / _L2); the server checks the real ones.
// The server's largest budget per norm: its defaults until v1/model answers with its own.
const LIMIT = { linf: 16 / 255, l2: 2.0 };
const limitSource = { known: false };
// The paper's budgets; replaced per norm by the one the active model was trained for (v1/model).
const DEFAULT_EPS = { linf: "8/255", l2: "0.5" };
const POLL_MS = { first: 150, max: 1000, growth: 1.5 };
const TRANSIENT_RETRIES = 5; // poll errors (network, 503) tolerated in a row

const state = { file: null, run: 0, epsTyped: false };

// ------------------------------------------------------------------ errors
/** What the user can do about an error, by HTTP status (0: no answer at all). */
function advice(err) {
  switch (err.status) {
    case 0: return "Check that the SafeSpot server is running and reachable, then try again.";
    case 400: return "The file could not be read as an image. Re-save it (or export it again) and retry.";
    case 401: return "Enter a valid key under “API key” and submit again.";
    case 403: return "This key may not do that.";
    case 404: return "It is unknown or has expired: submit the image again.";
    case 409: return "Wait for the job to finish.";
    case 413: return "The image is too large (file size or pixel count). Resize or compress it and retry.";
    case 415: return "Use a JPEG, PNG, WebP, GIF, BMP or TIFF image.";
    case 422: return "Check the settings: preset, threat model and eps (within the server's limits).";
    case 429: return `The queue is full. Try again${err.retryAfter ? ` in about ${err.retryAfter} s` : " shortly"}.`;
    case 503: return "No worker is ready (a model may still be loading). Try again in a moment.";
    default: return err.status >= 500 ? "The server failed. Try again; if it persists, tell the operator (the message above helps)." : "";
  }
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
  if (name === "admin") adminShown();
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
  wireDropZone($("drop"), $("file"), setFile);
  // A file dropped next to the zone must not make the browser navigate away from the page.
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) setFile(file);
  });
}

function epsState() {
  const norm = $("norm").value;
  const value = parseBudget($("eps").value);
  const limit = LIMIT[norm];
  const valid = Number.isFinite(value) && value > 0;
  return { norm, value, limit, valid };
}

function updateEpsHint() {
  const { norm, value, limit, valid } = epsState();
  const hint = $("eps-hint");
  const limitText = `${limitSource.known ? "server" : "default"} limit ${norm === "linf" ? budgetText(limit) : limit}`;
  if (!valid) {
    hint.textContent = "Enter a positive number such as 0.0314 or 8/255.";
  } else if (norm === "linf") {
    hint.textContent = `= ${value.toFixed(4)}, ${(value * LEVELS).toFixed(1)} of 255 levels per pixel (${limitText}).`;
  } else {
    hint.textContent = `= ${value.toFixed(3)} in [0,1] units over all pixels (${limitText}).`;
  }
  if (valid && value > limit + 1e-12) {
    hint.textContent += limitSource.known ? " Above the server's limit: it will be refused." : " Above the default limit: the server may refuse it.";
  }
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

/** The budget the active model was trained for becomes its norm's default, and fills the eps
 * field unless the user typed another (a photo model trained at 4/255 is protected at 4/255). */
function useModelBudget(model) {
  for (const [norm, limit] of Object.entries(model.max_eps || {})) {
    if (norm in LIMIT && limit > 0) {
      LIMIT[norm] = limit;
      limitSource.known = true;
    }
  }
  updateEpsHint();
  const threat = model.threat || {};
  if (!(threat.norm in DEFAULT_EPS) || !(threat.eps > 0)) return;
  const eps = $("eps");
  const untouched = !state.epsTyped && $("norm").value === threat.norm;
  DEFAULT_EPS[threat.norm] = budgetText(threat.eps);
  if (untouched) {
    eps.value = DEFAULT_EPS[threat.norm];
    updateEpsHint();
  }
}

function initOptions() {
  $("norm").addEventListener("change", () => {
    const eps = $("eps");
    const other = $("norm").value === "linf" ? "l2" : "linf";
    if (eps.value.trim() === DEFAULT_EPS[other] || !eps.value.trim()) eps.value = DEFAULT_EPS[$("norm").value];
    updateEpsHint();
  });
  $("eps").addEventListener("input", () => {
    state.epsTyped = true; // the model's budget no longer replaces it
    updateEpsHint();
  });
  const key = $("api-key");
  key.value = localStorage.getItem(API_KEY_STORE) || "";
  if (key.value) $("key-box").open = true;
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem(API_KEY_STORE, key.value.trim());
    else localStorage.removeItem(API_KEY_STORE);
    loadModel(key.value.trim(), useModelBudget);
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
    await showResult(job, png, state.file);
    loadModel(key, useModelBudget); // the model may have changed since the page loaded
    $("progress-box").hidden = true;
    setPhase("done");
  } catch (err) {
    if (token !== state.run) return;
    $("progress-box").hidden = true;
    const title = err.status === null ? "Filtering failed"
      : err.status === 0 ? "No answer from the server" : "The server refused the request";
    showError($("error"), err, title, advice(err));
    setPhase("error");
    $("error").focus?.();
  }
}

// -------------------------------------------------------------------- main
function init() {
  initDrop();
  initOptions();
  initAdmin();
  initTabs();
  $("filter-form").addEventListener("submit", submitFilter);
  initResults();
  loadModel($("api-key").value.trim(), useModelBudget);
  $("error").tabIndex = -1;
  $("results-title").tabIndex = -1;
  setPhase("idle");
}

init();
