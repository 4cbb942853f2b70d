// The model in the browser: onnxruntime-web's WebAssembly build runs the page's own ONNX files
// (the model and its step model), so a drawing never leaves the visitor's machine.
"use strict";

const ROWS = 28, COLS = 28, CLASSES = 10;

async function fetchBytes(url, fetchOptions) {
  const response = await fetch(url, fetchOptions);
  if (!response.ok) {
    const failure = new Error(`${url}: ${response.status} ${response.statusText}`);
    failure.status = response.status;
    throw failure;
  }
  return new Uint8Array(await response.arrayBuffer());
}

/** Load onnxruntime-web from `ortDir` and open the model (and the step model, when given). */
export async function loadEngine({ortDir, model, stepModel, hidden, fetchOptions = {}}) {
  const ort = await import(new URL("ort.wasm.min.mjs", ortDir).href);
  ort.env.wasm.numThreads = 1;  // one thread: no SharedArrayBuffer, so no cross-origin isolation needed
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = ortDir;  // the loader and .wasm beside it, never a CDN
  const options = {executionProviders: ["wasm"], graphOptimizationLevel: "all"};
  const session = await ort.InferenceSession.create(await fetchBytes(model, fetchOptions), options);
  const stepSession = stepModel ? await ort.InferenceSession.create(await fetchBytes(stepModel, fetchOptions), options) : null;
  return new BrowserEngine(ort, session, stepSession, hidden);
}

class BrowserEngine {
  constructor(ort, session, stepSession, hidden) {
    this.ort = ort;
    this.session = session;
    this.stepSession = stepSession;
    this.hidden = hidden;
    this.queue = Promise.resolve();  // one run at a time: a session is not re-entrant
    this.description = "onnxruntime-web " + (ort.env.versions?.web ?? "") + ", WebAssembly";
  }

  /** `count` images of 28 x 28 float32 values in [0, 1], one after another in `rows` ->
   *  {logits, probabilities: Float32Array [count * 10], steps: Float32Array [count * 28 * 10] or null}
   *  (steps: the probabilities after each row, from the step model, as StreamingPredictor.row_probabilities). */
  classify(rows, count) {
    const run = this.queue.then(() => this.run(rows, count));
    this.queue = run.catch(() => undefined);
    return run;
  }

  async run(rows, count) {
    const Tensor = this.ort.Tensor;
    const full = await this.session.run({rows: new Tensor("float32", rows, [count, ROWS, COLS])});
    const result = {logits: full.logits.data, probabilities: full.probabilities.data, steps: null};
    if (this.stepSession) result.steps = await this.rowProbabilities(rows, count);
    return result;
  }

  async rowProbabilities(rows, count) {
    const Tensor = this.ort.Tensor;
    const steps = new Float32Array(count * ROWS * CLASSES);
    let h = new Tensor("float32", new Float32Array(count * this.hidden), [count, this.hidden]);
    let c = new Tensor("float32", new Float32Array(count * this.hidden), [count, this.hidden]);
    for (let r = 0; r < ROWS; r++) {
      const row = new Float32Array(count * COLS);
      for (let i = 0; i < count; i++) row.set(rows.subarray((i * ROWS + r) * COLS, (i * ROWS + r + 1) * COLS), i * COLS);
      const out = await this.stepSession.run({row: new Tensor("float32", row, [count, COLS]), h, c});
      h = out.h_out;
      c = out.c_out;
      for (let i = 0; i < count; i++) {
        steps.set(out.probabilities.data.subarray(i * CLASSES, (i + 1) * CLASSES), (i * ROWS + r) * CLASSES);
      }
    }
    return steps;
  }
}
