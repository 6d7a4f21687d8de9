/* SafeSpot page, admin view: the checkpoints (GET v1/checkpoints) with their status and vetting
 * figures; upload (POST v1/checkpoints, XMLHttpRequest for its progress), activate
 * (POST v1/checkpoints/{id}/activate, `?override=true` for an unvetted one), delete
 * (DELETE v1/checkpoints/{id}); training runs are training.js.  Every call carries the admin key.
 *
 * The registry decides (only ready activates, the active and the shipped ones stay); the page
 * offers only what it allows and shows the API's message when it refuses anyway. */
import { $, ApiError, api, el, hideError, humanBytes, pct, secs, short, showError, upload, when, wireDropZone } from "./common.js";
import { initTraining, resumeTraining } from "./training.js";

const API = {
  checkpoints: "v1/checkpoints",
  checkpoint: (id) => `v1/checkpoints/${encodeURIComponent(id)}`,
  activate: (id, override) => `v1/checkpoints/${encodeURIComponent(id)}/activate${override ? "?override=true" : ""}`,
};
const ADMIN_KEY_STORE = "safespot.adminKey"; // sessionStorage: this tab only
const REFRESH_MS = 1500; // while a checkpoint is being vetted
const STATUS_BADGE = { active: "good", ready: "", validating: "warn", unvetted: "warn", rejected: "bad" };
const VETTING_COLUMNS = 5;

const state = { timer: 0, notice: "", file: null, upload: null };

// ------------------------------------------------------------------ errors
/** What an admin can do about an error: by the API's code first, then by HTTP status. */
export function advice(err) {
  switch (err.code) {
    case "missing_key": return "Enter the admin key at the top of this tab.";
    case "duplicate_checkpoint": return "This file is already registered: see the list above.";
    case "data_missing": return "Provide the data on the server as the message says, then start the run again.";
    case "aborted": return "";
    default: break;
  }
  switch (err.status) {
    case 0: return "Check that the SafeSpot server is running and reachable, then try again.";
    case 401: return "Enter a valid admin key at the top of this tab.";
    case 403: return "This needs an admin key (SAFESPOT_ADMIN_KEYS on the server).";
    case 404: return "It is gone (deleted, or expired): reload the list.";
    case 409: return "The list may be out of date: reload it and try again.";
    case 413: return "The file is over the server's checkpoint size limit (SAFESPOT_MAX_CHECKPOINT_BYTES).";
    case 415: return "Upload a .safetensors file, or a .pt/.pth state dict with its metadata.";
    case 422: return "Check the fields: the message says which one.";
    case 503: return "The queue or the registry is not reachable. Try again in a moment.";
    default: return err.status >= 500 ? "The server failed. Try again; if it persists, see the service's log." : "";
  }
}

/** The admin key, or "" after saying in `box` that it is missing. */
export function requireKey(box, title) {
  const key = $("admin-key").value.trim();
  if (!key) {
    const err = new ApiError(null, "missing_key", "no admin key entered");
    showError(box, err, title, advice(err));
    $("admin-key").focus();
  }
  return key;
}

// ------------------------------------------------------------ confirmation
/** A modal question (the page's <dialog>): resolves true only when the admin presses `ok`. */
function confirmAction({ title, text, ok }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  return new Promise((resolve) => {
    const answer = (yes) => () => dialog.close(yes ? "ok" : "cancel");
    const okButton = $("confirm-ok"), cancelButton = $("confirm-cancel");
    const onOk = answer(true), onCancel = answer(false);
    okButton.addEventListener("click", onOk);
    cancelButton.addEventListener("click", onCancel);
    dialog.addEventListener("close", () => {
      okButton.removeEventListener("click", onOk);
      cancelButton.removeEventListener("click", onCancel);
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    cancelButton.focus(); // the safe answer is the default one
  });
}

// ----------------------------------------------------------------- the list
function vettingCells(record) {
  const v = record.vetting;
  const wide = (cls, text) => [el("td", { colspan: String(VETTING_COLUMNS), class: cls, "data-field": "vetting", text })];
  if (v && v.skipped) return wide("muted vetting-skipped", `Not vetted: ${v.skipped}`);
  if (!v || v.clean_acc === undefined) {
    const text = record.status === "validating" ? "Vetting…"
      : record.status === "rejected" ? "—"
        : record.source === "shipped" ? "Shipped with the service: not vetted here" : "No vetting figures";
    return wide("muted", text);
  }
  const n = v.n ?? "?";
  const cell = (field, text, title, sub = null) =>
    el("td", { class: "num", "data-field": field, title }, text, sub ? el("span", { class: "sub", text: sub }) : null);
  const apgd = v.apgd_acc === undefined || v.apgd_acc === null
    ? cell("apgd_acc", "n/a", "not measured by this server's vetting")
    : cell("apgd_acc", pct(v.apgd_acc), "APGD-CE + targeted APGD-DLR", v.n_apgd ? `on ${v.n_apgd}` : null);
  return [
    cell("clean_acc", pct(v.clean_acc), `on ${n} images`),
    cell("pgd_acc", pct(v.pgd_acc), v.attack || "PGD-20"),
    apgd,
    cell("safe_spot_rate", pct(v.safe_spot_rate), `S-Full, ${v.preset || "fast"} preset`),
    cell("n", `${n} · ${secs(v.seconds)}`, v.data ? `vetting data: ${v.data}` : "", v.domain || null),
  ];
}

function statusCell(record) {
  const td = el("td", {}, el("span", { class: `badge ${STATUS_BADGE[record.status] ?? ""}`, text: record.status }));
  if (record.error) td.append(el("span", { class: "sub", text: `${record.error.code}: ${record.error.message}` }));
  if (record.override) {
    const o = record.override;
    td.append(el("span", { class: "sub override", title: o.reason || "", "data-field": "override",
      text: `${o.reason || "activated without vetting"} · ${when(o.at)}` }));
  }
  return td;
}

function modelCell(record) {
  const info = record.info || {};
  const model = [info.arch, info.num_classes ? `${info.num_classes} classes` : null,
    Array.isArray(info.input_size) ? info.input_size.join("×") : null,
    info.domain ? `domain ${info.domain}` : null].filter(Boolean).join(" · ");
  return el("td", {}, document.createTextNode(model || "—"),
    el("span", { class: "sub", title: record.sha256 || "", text: `sha256 ${short(record.sha256)}` }));
}

function actionButton(action, text, label, onClick, cls = "") {
  const button = el("button", { type: "button", class: cls, "data-action": action, "aria-label": label, text });
  button.addEventListener("click", () => onClick(button));
  return button;
}

function actionsCell(record) {
  const name = record.name || record.id;
  const td = el("td", { class: "actions-cell" });
  if (record.status === "ready") {
    td.append(actionButton("activate", "Activate", `Activate ${name}`, (b) => activate(record, b), "primary"));
  } else if (record.status === "unvetted") {
    td.append(actionButton("override", "Activate without vetting…", `Activate ${name} without vetting`,
      (b) => activate(record, b, true), "warn"));
  }
  const kept = [record.status === "active" ? "it is serving (activate another first)" : null,
    record.source === "shipped" ? "it is shipped with the service" : null].filter(Boolean);
  if (kept.length) {
    td.append(el("span", { class: "sub", "data-field": "not-deletable", text: `Cannot be deleted: ${kept.join("; ")}.` }));
  } else {
    td.append(actionButton("delete", "Delete…", `Delete ${name}`, (b) => remove(record, b), "danger"));
  }
  return td;
}

function checkpointRow(record) {
  const name = record.name || record.id;
  const row = el("tr", {},
    el("td", {}, el("strong", { text: name }),
      el("span", { class: "sub", text: `${record.id}${record.source ? ` · ${record.source}` : ""}` }),
      record.uploaded_at ? el("span", { class: "sub", text: when(record.uploaded_at) }) : null),
    statusCell(record), modelCell(record), ...vettingCells(record), actionsCell(record));
  row.dataset.id = record.id;
  row.dataset.status = record.status;
  return row;
}

function summary(body) {
  const n = body.checkpoints.length;
  const vetting = body.checkpoints.filter((c) => c.status === "validating").length;
  return `${n} checkpoint${n === 1 ? "" : "s"}${body.active ? `; active: ${body.active}` : ""}` +
    `${vetting ? `; ${vetting} being vetted (refreshing)` : ""}.`;
}

/** Fetch and show the list; while anything is being vetted, again every REFRESH_MS. */
export async function loadCheckpoints() {
  clearTimeout(state.timer);
  hideError($("admin-error"));
  const key = requireKey($("admin-error"), "Cannot list checkpoints");
  if (!key) return;
  sessionStorage.setItem(ADMIN_KEY_STORE, key);
  const table = $("ckpt-table");
  if (!table.dataset.loaded) $("admin-status").textContent = "Loading…";
  try {
    const body = await api(API.checkpoints, { key });
    $("ckpt-rows").replaceChildren(...body.checkpoints.map(checkpointRow));
    table.hidden = false;
    table.dataset.loaded = "1";
    $("admin-status").textContent = `${state.notice ? `${state.notice} ` : ""}${summary(body)}`;
    if (body.checkpoints.some((c) => c.status === "validating")) state.timer = setTimeout(loadCheckpoints, REFRESH_MS);
    resumeTraining();
  } catch (err) {
    $("admin-status").textContent = "";
    showError($("admin-error"), err, "Cannot list checkpoints", advice(err));
  }
}

async function act(button, title, call, notice) {
  const key = requireKey($("admin-error"), title);
  if (!key) return;
  button.disabled = true;
  hideError($("admin-error"));
  try {
    await call(key);
    state.notice = notice;
    await loadCheckpoints();
  } catch (err) {
    button.disabled = false;
    showError($("admin-error"), err, title, advice(err));
    $("admin-error").focus();
  }
}

async function activate(record, button, override = false) {
  const name = record.name || record.id;
  if (override && !await confirmAction({
    title: `Activate ${name} without vetting?`,
    text: `${name} has not been vetted (${record.vetting?.skipped || "no vetting set for its domain"}): its ` +
      "accuracy and robustness are unknown, and every client will be served by it. The override is " +
      "logged and recorded on the checkpoint.",
    ok: "Activate without vetting",
  })) return;
  await act(button, `Cannot activate ${name}`,
    (key) => api(API.activate(record.id, override), { method: "POST", key }),
    `Activated ${name}${override ? " without vetting" : ""}. Workers switch to it between batches.`);
  $("admin-status").focus();
}

async function remove(record, button) {
  const name = record.name || record.id;
  if (!await confirmAction({
    title: `Delete ${name}?`,
    text: `The record and the file of ${name} (${record.id}) are removed from the server. This cannot be undone.`,
    ok: "Delete",
  })) return;
  await act(button, `Cannot delete ${name}`,
    (key) => api(API.checkpoint(record.id), { method: "DELETE", key }), `Deleted ${name}.`);
  $("admin-status").focus();
}

// ------------------------------------------------------------------- upload
function setCheckpointFile(file) {
  state.file = file || null;
  $("ckpt-drop-text").textContent = file ? `${file.name} (${humanBytes(file.size)})` : "Drop a checkpoint here or choose a file";
  updateUploadState();
}

function updateUploadState() {
  const busy = state.upload !== null;
  $("upload-submit").disabled = !state.file || busy;
  $("upload-cancel").hidden = !busy;
  $("upload-hint").textContent = busy ? "" : state.file ? "" : "Choose a checkpoint first.";
}

function showUploadProgress(text, fraction) {
  $("upload-progress-box").hidden = false;
  const bar = $("upload-progress");
  if (fraction === null) bar.removeAttribute("value"); // indeterminate: the size is unknown
  else bar.value = fraction;
  $("upload-progress-text").textContent = text;
}

async function submitUpload(event) {
  event.preventDefault();
  const file = state.file;
  if (!file || state.upload) return;
  hideError($("upload-error"));
  const key = requireKey($("upload-error"), "Cannot upload");
  if (!key) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const name = $("ckpt-name").value.trim(), metadata = $("ckpt-metadata").value.trim();
  if (name) form.append("name", name);
  if (metadata) form.append("metadata", metadata);
  state.upload = {};
  updateUploadState();
  showUploadProgress(`Uploading ${file.name}…`, 0);
  try {
    const record = await upload(API.checkpoints, form, {
      key, handle: state.upload,
      onProgress: (sent, total) => showUploadProgress(total === null ? `Uploading ${file.name}: ${humanBytes(sent)}…`
        : sent < total ? `Uploading ${file.name}: ${humanBytes(sent)} of ${humanBytes(total)} (${Math.floor(100 * sent / total)}%)`
          : `Uploaded ${humanBytes(total)}; the server is checking the file…`, total ? sent / total : null),
    });
    showUploadProgress(`Uploaded ${file.name} as ${record.id}: ${record.status === "validating" ? "being vetted, see the list" : record.status}.`, 1);
    $("ckpt-file").value = "";
    $("ckpt-name").value = "";
    setCheckpointFile(null);
    state.notice = `Uploaded ${record.name || record.id}.`;
    await loadCheckpoints();
  } catch (err) {
    $("upload-progress-box").hidden = true;
    showError($("upload-error"), err, err.code === "aborted" ? "Upload cancelled" : `Cannot upload ${file.name}`, advice(err));
    $("upload-error").focus();
  } finally {
    state.upload = null;
    updateUploadState();
  }
}

function initUpload() {
  wireDropZone($("ckpt-drop"), $("ckpt-file"), setCheckpointFile);
  $("upload-form").addEventListener("submit", submitUpload);
  $("upload-cancel").addEventListener("click", () => state.upload?.abort?.());
  updateUploadState();
}

// --------------------------------------------------------------------- main
/** The admin tab was opened: list the checkpoints once, if a key is there. */
export function adminShown() {
  if ($("admin-key").value && !$("ckpt-table").dataset.loaded) loadCheckpoints();
}

export function initAdmin() {
  $("admin-key").value = sessionStorage.getItem(ADMIN_KEY_STORE) || "";
  $("admin-status").tabIndex = -1;
  $("admin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.notice = "";
    loadCheckpoints();
  });
  initUpload();
  initTraining({ requireKey, advice, onCheckpoint: loadCheckpoints });
}
