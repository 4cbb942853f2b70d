// rowrnn page: draw a digit and see what the model says. Two engines answer: the browser itself
// (onnxruntime-web runs the page's ONNX files: the drawing never leaves this machine) or the server
// (POST /v1/classify). The browser's is used when the page has it and WebAssembly works; ?engine=server
// picks the server, ?engine=browser insists on the browser. No build step, no request to any other origin.
import {loadEngine} from "./engine.mjs";
import {MAX_IMAGE_PIXELS, preprocessPixels} from "./preprocess.mjs";

const meta = (name) => document.querySelector(`meta[name="rowrnn-${name}"]`).content;
const MODEL = meta("model");
// Which model the page was made for: a server with several (a model repository) serves each its
// own files and answers; a static site's server ignores the query and has one.
const MODEL_QUERY = "?model=" + encodeURIComponent(MODEL);
const STEPS = meta("steps") === "1";  // a step model is there: the heat map
const SERVER = meta("server") === "1";  // rowrnn serve answers /v1/classify (not on a static site)
const BROWSER = meta("browser") === "1";  // onnxruntime-web and the model files are there
const REQUESTED = new URLSearchParams(location.search).get("engine");  // "browser", "server" or none
const STROKE_WIDTH = 20;  // px on the 280 px pad: about MNIST's stroke once scaled to 20 x 20
const DEBOUNCE_MS = 150;

const pad = document.getElementById("pad");
const ink = pad.getContext("2d", {willReadFrequently: true});
const seen = document.getElementById("seen").getContext("2d");
const heat = document.getElementById("steps").getContext("2d");
const belief = document.getElementById("belief");
const labelEl = document.getElementById("label");
const confidenceEl = document.getElementById("confidence");
const engineEl = document.getElementById("engine");
const enginesEl = document.getElementById("engines");
const bars = document.getElementById("bars");
const errorEl = document.getElementById("error");
const keyBox = document.getElementById("key-box");

let hasInk = false;
let drawing = null;  // {x, y} of the last point while a pointer is down
let timer = null;
let sequence = 0;  // answers to older requests are dropped
let apiKey = sessionStorage.getItem("rowrnn-key") || "";
let lastBody = null;

let browser = null;  // a Promise of the browser engine, or of null when it cannot run here

function headers(type) {
  const result = type ? {"Content-Type": type} : {};
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
  engineEl.textContent = "\u00a0";
  engineEl.dataset.engine = "";
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
  const mine = ++sequence, started = performance.now();  // both engines timed from here to the answer
  const pixels = ink.getImageData(0, 0, pad.width, pad.height);  // now: drawing may go on meanwhile
  withEngine(mine, (engine) => classifyHere(engine, mine, pixels, started),
             () => pad.toBlob((blob) => classify(blob, "image/png", mine, started), "image/png"));
}

/** Run `here(engine)` with the browser engine when it is the one in use, else `there()` (the server). */
async function withEngine(mine, here, there) {
  const engine = browser ? await browser : null;
  if (mine !== sequence) return;
  if (engine) here(engine);
  else if (SERVER && REQUESTED !== "browser") there();
  else showError("no engine can answer: " + enginesEl.textContent);
}

/** The browser engine: preprocess the pixels and run the model here; nothing is sent anywhere. */
async function classifyHere(engine, mine, pixels, started = performance.now()) {
  let rows, out;
  try {
    rows = preprocessPixels(pixels.data, pixels.width, pixels.height);
    engineEl.dataset.preprocessMs = (performance.now() - started).toFixed(2);
    out = await engine.classify(rows, 1);
  } catch (failure) {
    if (mine === sequence) {
      showEmpty();
      showError(failure.message);
    }
    return;
  }
  if (mine !== sequence) return;
  const probabilities = Array.from(out.probabilities);
  const label = probabilities.indexOf(Math.max(...probabilities));
  clearError();
  show({label, confidence: probabilities[label], probabilities, input: Array.from(rows, (v) => Math.round(255 * v)),
        steps: out.steps && Array.from(out.steps)}, "browser", performance.now() - started);
}

/** The server engine: POST the image's bytes to /v1/classify. */
async function classify(body, type, mine = ++sequence, started = performance.now()) {
  lastBody = {body, type};
  let response, answer;
  try {
    // the bytes themselves, not the Blob: what was sent is then visible to the browser's tools
    const bytes = await body.arrayBuffer();
    response = await fetch("v1/classify" + MODEL_QUERY + (STEPS ? "&steps=1" : ""), {method: "POST", body: bytes, headers: headers(type)});
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
  show(answer, "server", performance.now() - started);
}

function show(answer, engine, milliseconds) {
  labelEl.textContent = answer.label;
  labelEl.dataset.state = "answer";
  confidenceEl.textContent = (100 * answer.confidence).toFixed(1) + " % sure";
  engineEl.dataset.engine = engine;
  engineEl.dataset.ms = milliseconds.toFixed(2);
  engineEl.textContent = (engine === "browser" ? "Answered by your browser" : "Answered by the server") +
      " in " + milliseconds.toFixed(1) + " ms" + (engine === "browser" ? "" : " (round trip)");
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

/** A file's pixels at its own size, transparent areas on white paper (as runtime/preprocess.py). */
export function pixelsOf(bitmap) {
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

async function openFile(file) {
  if (!file) return;
  clearAll();
  const mine = sequence;
  let bitmap = null;
  try {  // show it on the pad when the browser can decode it
    bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (ignored) { /* not an image this browser can decode: the server (if used) says what is wrong */ }
  hasInk = true;
  withEngine(mine, (engine) => {
    if (!bitmap) showError(file.name + ": not an image this browser can decode");
    else if (bitmap.width * bitmap.height > MAX_IMAGE_PIXELS) showError(`image of ${bitmap.width}x${bitmap.height} pixels is too large`);
    else classifyHere(engine, ++sequence, pixelsOf(bitmap));
  }, () => classify(file, file.type || "application/octet-stream"));
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
  startEngines();
  if (lastBody) classify(lastBody.body, lastBody.type);
});

/** page/model.json: the footer's description of the model, and the step model's state size. */
async function describeModel() {
  const footer = document.getElementById("model");
  try {
    const response = await fetch("page/model.json" + MODEL_QUERY, {headers: headers()});
    if (response.status === 401) keyBox.hidden = false;
    if (!response.ok) {
      footer.textContent = "Model " + MODEL + ": description not available (" + response.status + ").";
      return null;
    }
    const info = await response.json();
    const parts = ["Model " + MODEL + ": " + (info.architecture || "row-by-row LSTM").replaceAll("->", "→")];
    if (info.test_accuracy) parts.push("MNIST test accuracy " + (100 * Number(info.test_accuracy)).toFixed(2) + " %");
    if (info.size_bytes) parts.push(Math.round(Number(info.size_bytes) / 1000) + " KB ONNX");  // kB, as the README
    footer.textContent = parts.join(" · ") + ".";
    return info;
  } catch (failure) {
    footer.textContent = "Model description not available (" + failure.message + ").";
    return null;
  }
}

function useBrowser() {
  if (REQUESTED === "server" && SERVER) return "the server, as ?engine=server asked";
  if (!BROWSER) return "the server (this server has no onnxruntime-web files: run `rowrnn site` once to fetch them)";
  if (typeof WebAssembly !== "object") return "the server (this browser has no WebAssembly)";
  return null;
}

/** Load the browser engine when it is the one to use, and say which engine answers. */
function startEngines() {
  const described = describeModel();
  const serverBecause = useBrowser();
  document.body.dataset.engine = serverBecause ? "server" : "loading";
  if (serverBecause) {
    browser = null;
    enginesEl.textContent = "Engine: " + serverBecause + ".";
    return;
  }
  enginesEl.textContent = "Engine: your browser (loading onnxruntime-web…).";
  browser = described.then((info) => {
    if (!info) throw new Error("the model description did not load");
    return loadEngine({
      ortDir: new URL("page/ort/", document.baseURI).href,
      model: new URL("page/model.onnx" + MODEL_QUERY, document.baseURI).href,
      stepModel: STEPS && info.step_hidden ? new URL("page/model.step.onnx" + MODEL_QUERY, document.baseURI).href : null,
      hidden: info.step_hidden,
      fetchOptions: {headers: headers()},
    });
  }).then((engine) => {
    document.body.dataset.engine = "browser";
    enginesEl.textContent = "Engine: your browser (" + engine.description + "); drawings never leave this machine.";
    return engine;
  }, (failure) => {
    document.body.dataset.engine = SERVER && REQUESTED !== "browser" ? "server" : "failed";
    enginesEl.textContent = "Engine: " + (document.body.dataset.engine === "server" ? "the server" : "none") +
        " (the browser engine did not load: " + failure.message + ").";
    return null;
  });
}

/** For tests and tools: the page's own browser engine (null when the server answers). */
export function browserEngine() {
  return browser ? browser : Promise.resolve(null);
}

if (REQUESTED === "server" && !SERVER) showError("this page has no server: ?engine=server cannot be used here");
blankPad();
showEmpty();
startEngines();
