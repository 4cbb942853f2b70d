// rowrnn page: draw a digit, send the drawing to POST /v1/classify, show what the model says.
// No dependencies, no build step, no request to any other origin.
"use strict";

const MODEL = document.querySelector('meta[name="rowrnn-model"]').content;
const STEPS = document.querySelector('meta[name="rowrnn-steps"]').content === "1";  // a step model is served
const STROKE_WIDTH = 20;  // px on the 280 px pad: about MNIST's stroke once scaled to 20 x 20
const DEBOUNCE_MS = 150;

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const heat = document.getElementById("steps").getContext("2d");
const belief = document.getElementById("belief");
const labelEl = document.getElementById("label");
const confidenceEl = document.getElementById("confidence");
const bars = document.getElementById("bars");
const errorEl = document.getElementById("error");
const keyBox = document.getElementById("key-box");

let hasInk = false;
let drawing = null;  // {x, y} of the last point while a pointer is down
let timer = null;
let sequence = 0;  // answers to older requests are dropped
let apiKey = sessionStorage.getItem("rowrnn-key") || "";
let lastBody = null;

function headers(type) {
  const result = {"Content-Type": type};
  if (apiKey) result.Authorization = "Bearer " + apiKey;
  return result;
}

function blankPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = "#000";
  ink.fillStyle = "#000";
  ink.lineWidth = STROKE_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
}

function buildBars() {
  bars.replaceChildren();
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.innerHTML = '<span class="digit"></span><span class="track"><span class="fill"></span></span><span class="value">–</span>';
    item.querySelector(".digit").textContent = digit;
    item.dataset.digit = digit;
    bars.append(item);
  }
}

function showEmpty() {
  labelEl.textContent = "–";
  labelEl.dataset.state = "empty";
  confidenceEl.textContent = "draw a digit to start";
  seen.clearRect(0, 0, 28, 28);
  heat.clearRect(0, 0, 10, 28);
  belief.hidden = true;
  buildBars();
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = false;
}

function clearError() {
  errorEl.hidden = true;
  errorEl.textContent = "";
}

function clearAll() {
  clearTimeout(timer);
  sequence++;
  hasInk = false;
  lastBody = null;
  blankPad();
  clearError();
  showEmpty();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {x: (event.clientX - box.left) * pad.width / box.width, y: (event.clientY - box.top) * pad.height / box.height};
}

function dot(p) {
  ink.beginPath();
  ink.arc(p.x, p.y, STROKE_WIDTH / 2, 0, 2 * Math.PI);
  ink.fill();
}

function line(from, to) {
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  clearTimeout(timer);
  drawing = point(event);
  dot(drawing);
  hasInk = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const next = point(each);
    line(drawing, next);
    drawing = next;
  }
});

function endStroke() {
  if (!drawing) return;
  drawing = null;
  clearTimeout(timer);
  timer = setTimeout(classifyPad, DEBOUNCE_MS);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function classifyPad() {
  if (!hasInk) return;
  pad.toBlob((blob) => classify(blob, "image/png"), "image/png");
}

async function classify(body, type) {
  const mine = ++sequence;
  lastBody = {body, type};
  let response, answer;
  try {
    // the bytes themselves, not the Blob: what was sent is then visible to the browser's tools
    const bytes = await body.arrayBuffer();
    const query = "?model=" + encodeURIComponent(MODEL) + (STEPS ? "&steps=1" : "");  // the model this page was made for
    response = await fetch("/v1/classify" + query, {method: "POST", body: bytes, headers: headers(type)});
    answer = await response.json();
  } catch (failure) {
    if (mine === sequence) showError("the server did not answer (" + failure.message + ")");
    return;
  }
  if (mine !== sequence) return;
  if (response.status === 401) {
    keyBox.hidden = false;
    showError(answer.error || "an API key is needed");
    return;
  }
  if (!response.ok) {
    showEmpty();
    showError(answer.error || "the server refused the image (" + response.status + ")");
    return;
  }
  clearError();
  show(answer);
}

function show(answer) {
  labelEl.textContent = answer.label;
  labelEl.dataset.state = "answer";
  confidenceEl.textContent = (100 * answer.confidence).toFixed(1) + " % sure";
  answer.probabilities.forEach((p, digit) => {
    const item = bars.children[digit];
    item.classList.toggle("top", digit === answer.label);
    item.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    item.querySelector(".value").textContent = (100 * p).toFixed(1) + " %";
  });
  const image = seen.createImageData(28, 28);
  answer.input.flat().forEach((v, i) => {
    image.data.set([v, v, v, 255], 4 * i);
  });
  seen.putImageData(image, 0, 0);
  if (answer.steps) {  // 28 rows x 10 digits, black = probability 1 (readable without colour)
    const map = heat.createImageData(10, 28);
    answer.steps.flat().forEach((p, i) => {
      const v = Math.round(255 * (1 - p));
      map.data.set([v, v, v, 255], 4 * i);
    });
    heat.putImageData(map, 0, 0);
    belief.hidden = false;
  }
}

async function openFile(file) {
  if (!file) return;
  clearAll();
  try {  // show it on the pad when the browser can decode it; the server decides either way
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (ignored) { /* not an image the browser knows: the server will say what is wrong */ }
  hasInk = true;
  classify(file, file.type || "application/octet-stream");
}

document.getElementById("file").addEventListener("change", (event) => {
  openFile(event.target.files[0]);
  event.target.value = "";
});
document.getElementById("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || (event.key === "Delete" && event.target === document.body)) clearAll();
});
for (const name of ["dragenter", "dragover"]) {
  pad.addEventListener(name, (event) => { event.preventDefault(); pad.classList.add("dragging"); });
}
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dragging");
  openFile(event.dataTransfer.files[0]);
});

document.getElementById("key-use").addEventListener("click", () => {
  apiKey = document.getElementById("key").value.trim();
  sessionStorage.setItem("rowrnn-key", apiKey);
  keyBox.hidden = true;
  clearError();
  describeModel();
  if (lastBody) classify(lastBody.body, lastBody.type);
});

async function describeModel() {
  const footer = document.getElementById("model");
  try {
    const response = await fetch("/v2/models/" + encodeURIComponent(MODEL), {headers: headers("application/json")});
    if (response.status === 401) keyBox.hidden = false;
    if (!response.ok) {
      footer.textContent = "Model " + MODEL + ": description not available (" + response.status + ").";
      return;
    }
    const info = (await response.json()).parameters || {};
    const parts = ["Model " + MODEL + ": " + (info.architecture || "row-by-row LSTM").replaceAll("->", "→")];
    if (info.test_accuracy) parts.push("MNIST test accuracy " + (100 * Number(info.test_accuracy)).toFixed(2) + " %");
    if (info.size_bytes) parts.push(Math.round(Number(info.size_bytes) / 1024) + " KB ONNX, run by onnxruntime");
    footer.textContent = parts.join(" · ");
  } catch (failure) {
    footer.textContent = "Model description not available (" + failure.message + ").";
  }
}

blankPad();
showEmpty();
describeModel();
