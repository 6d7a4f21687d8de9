/* SafeSpot page, admin view: start a training run (POST v1/training-jobs, the API's
 * TrainingRequestBody) and follow it (GET v1/training-jobs/{id}) until it ends.  The runs started
 * from this tab are remembered in sessionStorage, so a reload keeps following them.  Progress
 * fields beyond phase and fraction (epoch, step, images/s, ETA) are shown when the API sends them. */
import { $, ApiError, api, duration, el, hideError, parseBudget, pct, showError, sleep } from "./common.js";

const API = {
  start: "v1/training-jobs",
  job: (id) => `v1/training-jobs/${encodeURIComponent(id)}`,
};
const JOBS_STORE = "safespot.trainingJobs"; // sessionStorage: [{id, name}]
const TERMINAL = new Set(["finished", "failed", "canceled", "expired"]);
const POLL_MS = 1000;
const TRANSIENT_RETRIES = 5; // poll errors (network, 503) tolerated in a row
const HEADLINE = {
  queued: () => "Queued, waiting for the trainer",
  started: () => "Starting",
  training: (p) => `Training${p.epochs ? `: epoch ${p.epoch ?? 0} of ${p.epochs}` : ""}`,
  vetting: () => "Vetting the new checkpoint",
  done: () => "Done",
};

let deps = { requireKey: () => "", advice: () => "", onCheckpoint: () => {} };
const watching = new Set();

// ---------------------------------------------------------------- the form
function invalid(id, message) {
  $(id).setAttribute("aria-invalid", "true");
  const err = new ApiError(null, "invalid_input", message);
  err.field = id;
  return err;
}

/** The request body from the form (TrainingRequestBody), or an ApiError naming the bad field. */
function requestBody() {
  for (const id of ["train-epochs", "train-limit", "train-eps"]) $(id).removeAttribute("aria-invalid");
  const epochs = Number($("train-epochs").value);
  if (!Number.isInteger(epochs) || epochs < 1 || epochs > 1000) throw invalid("train-epochs", "epochs: a whole number from 1 to 1000");
  const limitText = $("train-limit").value.trim();
  const limit = limitText ? Number(limitText) : null;
  if (limit !== null && (!Number.isInteger(limit) || limit < 1)) throw invalid("train-limit", "limit: a whole number of images, at least 1 (or empty for all)");
  const epsText = $("train-eps").value.trim();
  const eps = epsText ? parseBudget(epsText) : null;
  if (eps !== null && !(Number.isFinite(eps) && eps > 0)) throw invalid("train-eps", "eps: a positive number such as 8/255 or 0.5 (or empty for the default)");
  const body = {
    recipe: $("train-recipe").value, norm: $("train-norm").value, epochs, limit,
    data: $("train-data").value.trim() || "cifar10", name: $("train-name").value.trim(),
  };
  if (eps !== null) body.eps = eps;
  return body;
}

async function submitTraining(event) {
  event.preventDefault();
  const box = $("train-error");
  hideError(box);
  const key = deps.requireKey(box, "Cannot start training");
  if (!key) return;
  const button = $("train-submit");
  try {
    const body = requestBody();
    button.disabled = true;
    const job = await api(API.start, { method: "POST", body, key });
    const entry = { id: job.job_id, name: body.name || `${body.recipe} ${body.data}` };
    remember([entry, ...stored().filter((j) => j.id !== entry.id)]);
    watch(entry, job);
  } catch (err) {
    showError(box, err, "Cannot start training", err.field ? "" : deps.advice(err));
    (err.field ? $(err.field) : box).focus();
  } finally {
    button.disabled = false;
  }
}

// ----------------------------------------------------------------- the jobs
const stored = () => {
  try {
    return JSON.parse(sessionStorage.getItem(JOBS_STORE) || "[]");
  } catch (_) {
    return [];
  }
};
const remember = (jobs) => sessionStorage.setItem(JOBS_STORE, JSON.stringify(jobs));

function jobItem(entry) {
  const existing = document.querySelector(`#train-jobs li[data-id="${CSS.escape(entry.id)}"]`);
  if (existing) return existing;
  const text = el("span", { class: "train-text", role: "status", "aria-live": "polite", "aria-atomic": "true" });
  const bar = el("progress", { max: "1", "aria-label": `Progress of ${entry.name}` });
  const dismiss = el("button", { type: "button", class: "link", hidden: "", text: "Dismiss",
    "aria-label": `Remove ${entry.name} from this list` });
  const item = el("li", { class: "train-job" },
    el("div", { class: "train-head" }, el("strong", { text: entry.name }), el("span", { class: "sub", text: entry.id }), dismiss),
    el("div", { class: "progress" }, bar, text),
    el("p", { class: "sub train-figures" }),
    el("div", { class: "train-outcome" }));
  item.dataset.id = entry.id;
  dismiss.addEventListener("click", () => {
    remember(stored().filter((j) => j.id !== entry.id));
    item.remove();
  });
  $("train-jobs").prepend(item);
  return item;
}

/** The headline (announced), the fraction, and the figures (not announced: they change each poll). */
function describe(job) {
  const p = job.progress || {};
  const phase = job.status === "finished" ? "done" : p.phase || job.status;
  const headline = (HEADLINE[phase] || (() => phase))(p);
  const fraction = job.status === "finished" ? 1 : Number.isFinite(p.fraction) ? p.fraction : null;
  const figures = [];
  if (fraction !== null) figures.push(pct(fraction));
  if (p.steps) figures.push(`step ${p.step ?? 0} of ${p.steps}`);
  if (Number.isFinite(p.images_per_s)) figures.push(`${Math.round(p.images_per_s)} images/s`);
  if (Number.isFinite(p.eta_s) && phase !== "done") figures.push(`about ${duration(p.eta_s)} left`);
  const last = p.last_epoch || {};
  if (Number.isFinite(last.holdout_clean_acc)) figures.push(`last epoch: holdout clean ${pct(last.holdout_clean_acc)}`);
  if (job.started_at && !TERMINAL.has(job.status)) figures.push(`running ${duration(Date.now() / 1000 - job.started_at)}`);
  return { phase, headline, fraction, figures: figures.join(" · ") };
}

function render(item, job) {
  const { phase, headline, fraction, figures } = describe(job);
  item.dataset.status = job.status;
  item.dataset.phase = phase;
  const bar = item.querySelector("progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.max(0, Math.min(1, fraction));
  item.querySelector(".train-text").textContent = headline;
  item.querySelector(".train-figures").textContent = figures;
}

function outcome(item, job) {
  const box = item.querySelector(".train-outcome");
  item.querySelector("button.link").hidden = false;
  const r = job.result;
  if (job.status === "finished" && r) {
    const v = r.vetting || {};
    const figures = v.skipped ? `not vetted: ${v.skipped}`
      : v.clean_acc !== undefined ? `clean ${pct(v.clean_acc)}, PGD-20 ${pct(v.pgd_acc)}, safe-spot rate ${pct(v.safe_spot_rate)}` : "";
    box.replaceChildren(el("p", {
      text: `Checkpoint ${r.name || r.id} (${r.id}) is ${r.status}${figures ? `: ${figures}` : ""}. ` +
        (r.status === "ready" ? "Activate it in the list above when you want it served." : ""),
    }));
    deps.onCheckpoint();
    return;
  }
  const e = job.error || {};
  const err = new ApiError(null, e.code || `job_${job.status}`, e.message || `the run ended as ${job.status}`);
  const alert = el("div", { class: "alert", role: "alert" });
  showError(alert, err, "The training run failed", "The service's log has the details.");
  box.replaceChildren(alert);
}

/** Poll one job until it ends (one loop per job, however often it is asked for). */
async function watch(entry, job = null) {
  const item = jobItem(entry);
  if (watching.has(entry.id)) return;
  watching.add(entry.id);
  let failures = 0;
  try {
    while (!job || !TERMINAL.has(job.status)) {
      if (job) render(item, job);
      if (job || failures) await sleep(POLL_MS);
      const key = $("admin-key").value.trim();
      try {
        job = await api(API.job(entry.id), { key });
        failures = 0;
      } catch (err) {
        if ((err.status === 0 || err.status === 503) && ++failures <= TRANSIENT_RETRIES) continue;
        throw err;
      }
    }
    render(item, job);
    outcome(item, job);
  } catch (err) {
    item.dataset.status = "unknown";
    const alert = el("div", { class: "alert", role: "alert" });
    showError(alert, err, "Cannot follow this run", deps.advice(err));
    item.querySelector(".train-outcome").replaceChildren(alert);
    item.querySelector("button.link").hidden = false;
  } finally {
    watching.delete(entry.id);
  }
}

/** Follow the runs started from this tab (after a reload, once the admin key is known). */
export function resumeTraining() {
  for (const entry of stored().reverse()) {
    const item = document.querySelector(`#train-jobs li[data-id="${CSS.escape(entry.id)}"]`);
    if (!watching.has(entry.id) && !(item && item.querySelector(".train-outcome").childElementCount)) watch(entry);
  }
}

export function initTraining(dependencies) {
  deps = dependencies;
  $("train-form").addEventListener("submit", submitTraining);
}
