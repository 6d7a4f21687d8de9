/* SafeSpot page, filter view: a finished job's images and scores.  The difference image is
 * computed here, in a canvas, from the original as uploaded and the PNG the API returned. */
import { $, el, fmt, LEVELS, pct, secs, short } from "./common.js";

const MAX_AUTO_AMP = 50;
const AUTO_SPAN = 80; // auto amplification maps the largest change to 128 ± 80 (no clipping)

const state = { urls: [], pixels: null };

function safeName(name) {
  const base = (name || "image").replace(/\.[^./\\]*$/, "") || "image";
  return `${base}.safe.png`;
}

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

/** Show a finished job: `png` is the API's image, `file` the original as the user chose it. */
export async function showResult(job, png, file) {
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
  const r = job.result;
  state.pixels = null;
  const imgO = $("img-original"), imgF = $("img-filtered"), imgD = $("img-diff");
  const [okO, okF] = await Promise.all([loadImage(imgO, blobUrl(file)), loadImage(imgF, blobUrl(png))]);
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
  link.download = safeName(file.name);
  link.textContent = `Download ${link.download}`;
  renderScores(r);
  $("raw-json").textContent = JSON.stringify(job, null, 2);
  $("results").hidden = false;
  $("results-title").focus?.();
}

/** What `ood_method` names (docs/ood.md): the score the checkpoint's OOD flag uses. */
const OOD_METHODS = {
  "safespot": "safe-spot score D(x)",
  "mahalanobis-layers": "Mahalanobis distance of the model's layer features",
};

function score(label, value, sub = null, badge = null, title = null) {
  const dd = el("dd", { title });
  if (badge) dd.append(el("span", { class: `badge ${badge[1]}`, text: badge[0] }), value ? " " : "");
  if (value) dd.append(value);
  if (sub) dd.append(el("span", { class: "sub", text: sub }));
  return el("div", {}, el("dt", { text: label }), dd);
}

/** The five most probable classes on the original (the first is the prediction), with bars. */
function topFive(p) {
  const entries = p.top5 || [];
  if (!entries.length) return null;
  return el("ol", { class: "top5", id: "top5", "aria-label": "Most probable classes" }, ...entries.map((e) => {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(100, 100 * e.probability))}%`; // CSSOM: the CSP allows it
    return el("li", { "data-label": String(e.label) },
      el("span", { class: "name", text: e.class_name, title: `class ${e.label}` }),
      el("span", { class: "bar", "aria-hidden": "true" }, fill),
      el("span", { class: "prob", text: pct(e.probability) }));
  }));
}

function renderScores(r) {
  const list = $("scores");
  const p = r.prediction || {}, rob = r.robustness || {}, t = r.threat || {}, m = r.model || {};
  const tm = r.timings || {}, img = r.image || {};
  const levels = Math.round((r.linf || 0) * LEVELS);
  const prediction = score("Prediction", `${p.class_name ?? "?"}`, `class ${p.label} · ${pct(p.confidence)} confidence`);
  prediction.className = "prediction";
  prediction.querySelector("dd").append(topFive(p) ?? "");
  const items = [
    prediction,
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
    score("OOD score", fmt(r.ood_score, 3), `${Object.hasOwn(OOD_METHODS, r.ood_method) ? OOD_METHODS[r.ood_method] : r.ood_method || "score"} · low means unlike the model's training images`,
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

export function initResults() {
  $("amp").addEventListener("change", renderDiff);
}
