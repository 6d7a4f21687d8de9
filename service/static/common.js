/* SafeSpot page: what the filter view (app.js) and the admin view (admin.js, training.js) share:
 * the API's error shape, fetch and XMLHttpRequest helpers, formatting, element building. */

export const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ errors
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status; // HTTP status; 0: no answer at all; null: a job that failed
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Fill an alert box with the error's status, code and message, and what to do about it. */
export function showError(box, err, title, hint = "") {
  box.replaceChildren();
  const where = err.status ? ` (${err.status} ${err.code})` : err.code ? ` (${err.code})` : "";
  box.append(el("strong", { text: `${title}${where}` }), el("p", { text: err.message || "unknown error" }));
  const advice = err.hint || hint;
  if (advice) box.append(el("p", { text: advice }));
  box.hidden = false;
}

export function hideError(box) {
  box.hidden = true;
  box.replaceChildren();
}

/** The API's `{"error": {"code", "message"}}` (or a proxy's page: its status text). */
export function errorFromBody(status, statusText, bodyText, retryAfter = null) {
  let code = `http_${status}`;
  let message = statusText || "request failed";
  try {
    const body = JSON.parse(bodyText);
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) { /* not JSON: keep the status text */ }
  return new ApiError(status, code, message, retryAfter);
}

// --------------------------------------------------------------------- api
/** fetch() with the key as a bearer token; a plain object body goes as JSON. */
export async function api(path, { method = "GET", body = undefined, key = "", as = "json" } = {}) {
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, body, headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network_error", `the server could not be reached (${e.message})`);
  }
  if (!res.ok) throw errorFromBody(res.status, res.statusText, await res.text(), res.headers.get("Retry-After"));
  if (as === "blob") return res.blob();
  return res.status === 204 ? null : res.json();
}

/** POST a form with XMLHttpRequest, the one browser API that reports upload progress:
 * onProgress(sent, total) while the body goes out. Resolves with the JSON answer; `handle.abort()`
 * cancels (rejecting with code "aborted"). */
export function upload(path, form, { key = "", onProgress = () => {}, handle = {} } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : null));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch (_) {
          reject(new ApiError(xhr.status, "bad_response", "the server's answer is not JSON"));
        }
      } else {
        reject(errorFromBody(xhr.status, xhr.statusText, xhr.responseText, xhr.getResponseHeader("Retry-After")));
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", "the server could not be reached")));
    xhr.addEventListener("abort", () => reject(new ApiError(null, "aborted", "the upload was cancelled")));
    handle.abort = () => xhr.abort();
    xhr.send(form);
  });
}

/** A budget as typed: "8/255" or "0.0314" -> number; NaN when it is neither. */
export function parseBudget(raw) {
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

export const LEVELS = 255; // 8-bit levels per channel

/** A drop zone plus its file input: `onFile(file)` gets the chosen or dropped file. */
export function wireDropZone(drop, input, onFile) {
  input.addEventListener("change", (e) => onFile(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "dragend"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation(); // this zone took the file; no other handler should
    drop.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -------------------------------------------------------------- formatting
const missing = (x) => x === null || x === undefined || Number.isNaN(x);
export const fmt = (x, digits = 3) => (missing(x) ? "n/a" : Number(x).toFixed(digits));
export const pct = (x) => (missing(x) ? "n/a" : `${(100 * x).toFixed(1)}%`);
export const secs = (x) => (missing(x) ? "n/a" : `${Number(x).toFixed(x < 10 ? 2 : 1)} s`);
export const short = (sha) => (sha ? String(sha).slice(0, 12) : "n/a");

export function humanBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** A duration for people: "42 s", "3 min 05 s", "2 h 07 min". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** A unix time (seconds) in the reader's locale. */
export const when = (unix) => (missing(unix) ? "n/a" : new Date(unix * 1000).toLocaleString());

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
