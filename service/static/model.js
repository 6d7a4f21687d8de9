/* SafeSpot page: the active model and the classes it tells apart (GET v1/model), shown above the
 * filter form so users know which labels to expect.  Best effort: without a usable key, or before
 * a worker registered a model, the box stays hidden and the filter works as before. */
import { $, api, el, LEVELS } from "./common.js";

const INLINE_NAMES = 6; // names shown in the one-line summary; the rest when the box is opened

let latest = 0; // answers to older requests are dropped (the key may change meanwhile)

function summaryText(model) {
  const names = model.class_names || [];
  const count = model.num_classes ?? names.length;
  const head = names.slice(0, INLINE_NAMES).join(", ");
  const more = names.length > INLINE_NAMES ? ", …" : "";
  return `Model ${model.name}: ${count} class${count === 1 ? "" : "es"}${head ? ` (${head}${more})` : ""}`;
}

/** The model's training budget as the eps field writes it: k/255 for whole levels (metadata keeps 8
 * decimals, so 4/255 comes back as 0.01568627), else decimals. */
export function budgetText(eps) {
  const levels = eps * LEVELS;
  return Math.abs(levels - Math.round(levels)) < 1e-4 ? `${Math.round(levels)}/255` : String(Number(eps.toFixed(6)));
}

function render(model) {
  const names = model.class_names || [];
  $("model-summary").textContent = summaryText(model);
  $("model-classes").replaceChildren(...names.map((name, label) => el("li", { value: String(label), text: name })));
  $("model-no-names").hidden = names.length > 0;
  $("model-box").dataset.classes = String(model.num_classes ?? names.length);
  $("model-box").hidden = false;
}

/** Ask for the active model with this key; show it, or hide the box when it cannot be had.
 * `onModel(model)` hears of it (the filter form takes the budget the model was trained for). */
export async function loadModel(key, onModel = () => {}) {
  const token = ++latest;
  try {
    const model = await api("v1/model", { key });
    if (token !== latest) return;
    render(model);
    onModel(model);
  } catch (_) {
    if (token === latest) $("model-box").hidden = true;
  }
}
