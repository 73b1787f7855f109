// The page of tools/serve.py: choose a query and a support image, drag the exemplar box, press Find.
// Boxes are kept in image pixels (x, y, w, h), as the API takes and returns them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  query: null,    // {file, image} of the query image
  support: null,  // {file, image} of the support image
  box: null,      // exemplar box [x, y, w, h] in support-image pixels; null: the whole image
  drag: null,     // the box being drawn: {id, x0, y0, x1, y1}
  result: null,   // the API's answer for the current inputs
  request: 0,     // bumped whenever the inputs change, so that a late answer is dropped
};
const MIN_DRAG_CSS_PX = 4;  // a shorter drag is a tap, not a box

function setStatus(name, message) {
  document.body.dataset.state = name;
  if (message !== undefined) $("status").textContent = message;
}

function supportSource() {
  return $("same-image").checked ? state.query : state.support;
}

function loadFile(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve({file, image});
    image.onerror = () => reject(new Error(`${file.name}: this browser cannot show it as an image`));
    image.src = URL.createObjectURL(file);
  });
}

// Size the canvas to its panel (at most 70% of the window's height), draw the image, and return a
// context whose units are image pixels, with k = CSS pixels per image pixel.
function paint(canvas, image) {
  const width = image.naturalWidth, height = image.naturalHeight;
  const room = canvas.parentElement.clientWidth;
  const css = Math.min(room, (window.innerHeight * 0.7) * width / height);
  const dpr = window.devicePixelRatio || 1;
  canvas.classList.add("loaded");
  canvas.style.width = `${css}px`;
  canvas.style.height = `${css * height / width}px`;
  canvas.width = Math.max(1, Math.round(css * dpr));
  canvas.height = Math.max(1, Math.round(css * height / width * dpr));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(canvas.width / width, 0, 0, canvas.height / height, 0, 0);
  ctx.drawImage(image, 0, 0);
  return {ctx, k: css / width};
}

function clearCanvas(canvas) {
  canvas.classList.remove("loaded");
  canvas.style.width = canvas.style.height = "";
  canvas.width = canvas.height = 0;
}

function drawSupport() {
  const canvas = $("support-canvas"), source = supportSource();
  if (!source) return clearCanvas(canvas);
  const {ctx, k} = paint(canvas, source.image);
  const d = state.drag;
  const box = d ? [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.abs(d.x1 - d.x0), Math.abs(d.y1 - d.y0)]
                : state.box;
  if (!box) return;
  const [x, y, w, h] = box, W = source.image.naturalWidth, H = source.image.naturalHeight;
  ctx.fillStyle = "rgba(0, 0, 0, 0.45)";  // dim everything but the exemplar
  ctx.fillRect(0, 0, W, y); ctx.fillRect(0, y + h, W, H - y - h);
  ctx.fillRect(0, y, x, h); ctx.fillRect(x + w, y, W - x - w, h);
  ctx.lineWidth = 2 / k;
  ctx.strokeStyle = "#0b63ce";
  ctx.setLineDash(d ? [6 / k, 4 / k] : []);
  ctx.strokeRect(x, y, w, h);
}

function threshold() {
  return Number($("threshold").value);
}

function shownDetections() {
  return state.result ? state.result.detections.filter((d) => d.score >= threshold()) : [];
}

function drawResult() {
  const canvas = $("result-canvas"), shown = shownDetections();
  $("threshold-value").textContent = threshold().toFixed(2);
  $("count").dataset.count = String(shown.length);
  $("count").textContent = state.result ? `${shown.length} detection${shown.length === 1 ? "" : "s"}` : "";
  $("download").disabled = !state.result;
  canvas.dataset.drawn = "0";
  if (!state.query) return clearCanvas(canvas);
  const {ctx, k} = paint(canvas, state.query.image);
  ctx.lineWidth = 2.5 / k;
  ctx.font = `${13 / k}px system-ui, "DejaVu Sans", sans-serif`;
  ctx.textBaseline = "top";
  for (const det of [...shown].reverse()) {  // lowest score first: the best boxes end on top
    const [x, y, w, h] = det.bbox, label = det.score.toFixed(2);
    ctx.strokeStyle = ctx.fillStyle = "#ff7a00";
    ctx.strokeRect(x, y, w, h);
    const tw = ctx.measureText(label).width + 6 / k, th = 17 / k;
    const ty = y >= th ? y - th : y;
    ctx.fillRect(x - 1.25 / k, ty, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 3 / k - 1.25 / k, ty + 2 / k);
  }
  canvas.dataset.drawn = String(shown.length);
}

function inputsChanged() {
  state.result = null;
  state.request += 1;
  const ready = Boolean(state.query && supportSource());
  $("find").disabled = !ready;
  setStatus(ready ? "ready" : "empty", ready ? "Press Find (drag a box on the exemplar first, or use the whole image)."
                                             : "Choose a query image and an exemplar.");
  $("box-input").value = state.box ? state.box.map((v) => Math.round(v)).join(",") : "";
  drawSupport();
  drawResult();
}

async function chooseFile(which, file) {
  if (!file) return;
  try {
    state[which] = await loadFile(file);
    $(`${which}-name`).textContent = file.name;
    if (which === "support" || $("same-image").checked) state.box = null;
    inputsChanged();
  } catch (e) {
    setStatus("error", e.message);
  }
}

function toImagePixels(canvas, image, event) {
  const r = canvas.getBoundingClientRect();
  const x = (event.clientX - r.left) * image.naturalWidth / r.width;
  const y = (event.clientY - r.top) * image.naturalHeight / r.height;
  return [Math.min(Math.max(x, 0), image.naturalWidth), Math.min(Math.max(y, 0), image.naturalHeight)];
}

function wireBoxDrawing() {
  const canvas = $("support-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    const source = supportSource();
    if (!source || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = toImagePixels(canvas, source.image, event);
    state.drag = {id: event.pointerId, x0: x, y0: y, x1: x, y1: y};
  });
  canvas.addEventListener("pointermove", (event) => {
    const source = supportSource();
    if (!state.drag || event.pointerId !== state.drag.id || !source) return;
    [state.drag.x1, state.drag.y1] = toImagePixels(canvas, source.image, event);
    drawSupport();
  });
  const finish = (event) => {
    const d = state.drag, source = supportSource();
    if (!d || event.pointerId !== d.id) return;
    state.drag = null;
    const k = canvas.getBoundingClientRect().width / source.image.naturalWidth;
    const w = Math.abs(d.x1 - d.x0), h = Math.abs(d.y1 - d.y0);
    if (event.type === "pointerup" && w * k >= MIN_DRAG_CSS_PX && h * k >= MIN_DRAG_CSS_PX) {
      state.box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), w, h];
      inputsChanged();
    } else {
      drawSupport();  // a tap or a cancelled drag keeps the previous box
    }
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
}

function wireDropZone(which) {
  const zone = $(`${which}-drop`), input = $(`${which}-file`);
  input.addEventListener("change", () => chooseFile(which, input.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    chooseFile(which, event.dataTransfer.files[0]);
  });
}

async function find() {
  const source = supportSource();
  if (!state.query || !source) return;
  const form = new FormData();
  form.append("query", state.query.file, state.query.file.name);
  if (!$("same-image").checked) form.append("support", state.support.file, state.support.file.name);
  // the box as the field shows it (whole pixels): what is sent is what the user sees and can reuse
  if (state.box) form.append("support_box", state.box.map((v) => Math.round(v)).join(","));
  form.append("score_threshold", "0");  // everything the model returns; the slider filters here
  const token = ++state.request, started = performance.now();
  $("find").disabled = true;
  setStatus("busy", "Finding\u2026");
  try {
    const response = await fetch("/api/predict", {method: "POST", body: form});
    const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (token !== state.request) return;  // the inputs changed while we waited
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error(`${body.error || response.statusText}${retry ? ` (try again in ${retry} s)` : ""}`);
    }
    state.result = body;
    const ms = Math.round(performance.now() - started);
    setStatus("done", `${body.detections.length} candidates in ${ms} ms; the slider filters them.`);
  } catch (e) {
    if (token === state.request) setStatus("error", `Not found: ${e.message}`);
  } finally {
    if (token === state.request) $("find").disabled = false;
  }
  drawResult();
}

function download() {
  if (!state.result) return;
  const entry = {...state.result, detections: shownDetections()};
  const url = URL.createObjectURL(new Blob([JSON.stringify([entry], null, 1)], {type: "application/json"}));
  const a = Object.assign(document.createElement("a"), {href: url, download: "results.json"});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function typedBox() {
  const text = $("box-input").value.trim();
  if (!text) { state.box = null; return inputsChanged(); }
  const values = text.split(",").map(Number);
  if (values.length !== 4 || values.some((v) => !Number.isFinite(v)) || values[2] <= 0 || values[3] <= 0) {
    return setStatus("error", "Box: type x,y,w,h in support-image pixels (width and height > 0).");
  }
  state.box = values;
  inputsChanged();
}

async function showModel() {
  try {
    const m = await (await fetch("/api/model")).json();
    const name = m.checkpoint ? m.checkpoint.split("/").pop() : "model";
    $("model-info").textContent = `${name} \u00b7 ${m.model.backbone} \u00b7 ${m.model.attention} attention \u00b7 ` +
      `${m.device} \u00b7 up to ${m.inference.max_detections} detections`;
  } catch (e) {
    $("model-info").textContent = "model information unavailable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropZone("query");
  wireDropZone("support");
  wireBoxDrawing();
  $("same-image").addEventListener("change", () => {
    document.body.classList.toggle("same", $("same-image").checked);
    state.box = null;
    inputsChanged();
  });
  $("clear-box").addEventListener("click", () => { state.box = null; inputsChanged(); });
  $("box-input").addEventListener("change", typedBox);
  $("threshold").addEventListener("input", drawResult);
  $("find").addEventListener("click", find);
  $("download").addEventListener("click", download);
  window.addEventListener("resize", () => { drawSupport(); drawResult(); });
  document.addEventListener("dragover", (event) => event.preventDefault());  // a missed drop does not navigate away
  document.addEventListener("drop", (event) => event.preventDefault());
  showModel();
  inputsChanged();
});
