// MNIST-style preprocessing in the browser: the same steps, in the same order and the same float32
// arithmetic, as runtime/preprocess.py (`preprocess_image`), so the browser engine sees the 28 x 28
// image the server would. Each function mirrors the Python function of the same name.
"use strict";

export const SIZE = 28;
const DIGIT_BOX = 20;
const INK_THRESHOLD = 0.25;  // of full contrast: fainter pixels are paper texture or noise
export const MAX_IMAGE_PIXELS = 64_000_000;  // as runtime/preprocess.py: refused before decoding
const f32 = Math.fround;

/** A grey image: float32 values in [0, 1], `height` rows of `width`. */
function grey(width, height, values = new Float32Array(width * height)) {
  return {width, height, values};
}

/** Canvas RGBA bytes (opaque: transparent areas were painted onto white paper) -> the grey level
 *  (0-255) of each pixel, with Pillow's convert("L") weights and rounding (ITU-R 601-2 luma in
 *  16-bit fixed point). Python divides them by 255 next; we keep the levels, which make the
 *  median and percentile below a count instead of a sort. */
export function toGrayscale(rgba, width, height) {
  if (width * height > MAX_IMAGE_PIXELS) throw new Error(`image of ${width}x${height} pixels is too large`);
  const levels = new Uint8Array(width * height);
  for (let i = 0; i < levels.length; i++) {
    levels[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return {width, height, levels};
}

/** The values at sorted positions `ranks` of the levels' values, `value(level)` ascending in `order`. */
function ranked(counts, order, value, ranks) {
  const found = [];
  let seen = 0, next = 0;
  for (const level of order) {
    seen += counts[level];
    while (next < ranks.length && ranks[next] < seen) {
      found.push(value(level));
      next++;
    }
  }
  return found;
}

function histogram(levels) {
  const counts = new Uint32Array(256);
  for (const level of levels) counts[level]++;
  return counts;
}

const ASCENDING = Array.from({length: 256}, (_, level) => level);
const DESCENDING = [...ASCENDING].reverse();
const LEVEL = ASCENDING.map((level) => f32(level / 255));  // Python: float32 level / 255

function median(counts, total) {  // numpy's: the mean of the two middle values of an even count
  const middle = total >> 1;
  const [low, high] = ranked(counts, ASCENDING, (level) => LEVEL[level], total % 2 ? [middle, middle] : [middle - 1, middle]);
  return total % 2 ? high : f32((low + high) / 2);
}

function percentile(counts, total, order, value, q) {  // numpy's default (linear) method
  const index = (q / 100) * (total - 1);
  const below = Math.floor(index), above = Math.min(below + 1, total - 1);
  const [a, b] = ranked(counts, order, value, [below, above]);
  const t = index - below, difference = b - a;
  return t >= 0.5 ? b - difference * (1 - t) : a + difference * t;
}

/** White ink on black with contrast stretched to [0, 1]; inverted if the paper is light. */
export function inkOnBlack(image) {
  const {width, height, levels} = image;
  const border = [];
  for (let x = 0; x < width; x++) border.push(levels[x], levels[(height - 1) * width + x]);
  for (let y = 0; y < height; y++) border.push(levels[y * width], levels[y * width + width - 1]);
  let background = median(histogram(border), border.length);
  const light = background > 0.5;
  const ink = light ? LEVEL.map((v) => f32(1 - v)) : LEVEL;  // ink of each level, float32
  background = Math.min(background, 1 - background);
  const peak = percentile(histogram(levels), levels.length, light ? DESCENDING : ASCENDING, (level) => ink[level], 99.9);
  if (peak - background < 0.1) throw new Error("no digit found: the image has almost no contrast");
  const shift = f32(background), range = f32(peak - background);
  const stretched = ink.map((v) => Math.min(Math.max(f32(f32(v - shift) / range), 0), 1));
  const out = grey(width, height);
  for (let i = 0; i < levels.length; i++) out.values[i] = stretched[levels[i]];
  return out;
}

export function cropToInk(image) {
  const {width, height, values} = image;
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (values[y * width + x] > INK_THRESHOLD) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  if (bottom < 0) throw new Error("no digit found: the image is blank");
  const out = grey(right - left + 1, bottom - top + 1);
  for (let y = top; y <= bottom; y++) {
    for (let x = left; x <= right; x++) {
      const v = values[y * width + x];
      out.values[(y - top) * out.width + (x - left)] = v > INK_THRESHOLD * 0.5 ? v : 0;
    }
  }
  return out;
}

function roundHalfEven(x) {  // Python's round()
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Pillow's resampling coefficients (Resample.c, precompute_coeffs) for one axis. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize, filterScale = Math.max(scale, 1), support = 3 * filterScale;
  const result = [];
  for (let xx = 0; xx < outSize; xx++) {
    const centre = (xx + 0.5) * scale;
    const first = Math.max(Math.trunc(centre - support + 0.5), 0);
    const end = Math.min(Math.trunc(centre + support + 0.5), inSize);
    const weights = [];
    let total = 0;
    for (let x = first; x < end; x++) {
      const w = lanczos((x - centre + 0.5) / filterScale);
      weights.push(w);
      total += w;
    }
    result.push({first, weights: total === 0 ? weights : weights.map((w) => w / total)});
  }
  return result;
}

/** One resampling pass of a float image (Pillow's ImagingResample{Horizontal,Vertical}_32bpc):
 *  a double sum per pixel, stored as float32. */
function resamplePass(image, outWidth, outHeight, horizontal) {
  const out = grey(outWidth, outHeight);
  const taps = horizontal ? coefficients(image.width, outWidth) : coefficients(image.height, outHeight);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const {first, weights} = taps[horizontal ? x : y];
      let sum = 0;
      for (let k = 0; k < weights.length; k++) {
        sum += (horizontal ? image.values[y * image.width + first + k] : image.values[(first + k) * image.width + x]) * weights[k];
      }
      out.values[y * outWidth + x] = f32(sum);
    }
  }
  return out;
}

/** Resize so the longer side is `box` pixels, keeping the aspect ratio (Pillow's LANCZOS). */
export function fitBox(image, box = DIGIT_BOX) {
  const scale = box / Math.max(image.height, image.width);
  const width = Math.max(1, roundHalfEven(image.width * scale)), height = Math.max(1, roundHalfEven(image.height * scale));
  let resized = image;
  if (width !== image.width) resized = resamplePass(resized, width, resized.height, true);
  if (height !== image.height) resized = resamplePass(resized, width, height, false);
  const out = resized.values.map((v) => Math.min(Math.max(v, 0), 1));
  const peak = out.reduce((a, b) => Math.max(a, b), 0);
  return grey(width, height, peak > 0 ? out.map((v) => f32(v / peak)) : out);
}

/** Place the digit in a SIZE x SIZE field with its centre of mass at the centre. */
export function centreByMass(digit, size = SIZE) {
  let total = 0, rowMoment = 0, colMoment = 0;
  for (let y = 0; y < digit.height; y++) {
    for (let x = 0; x < digit.width; x++) {
      const v = digit.values[y * digit.width + x];
      total += v; rowMoment += y * v; colMoment += x * v;
    }
  }
  total = f32(total);
  let top = roundHalfEven(size / 2 - rowMoment / total - 0.5);
  let left = roundHalfEven(size / 2 - colMoment / total - 0.5);
  top = Math.min(Math.max(top, 0), size - digit.height);
  left = Math.min(Math.max(left, 0), size - digit.width);
  const field = new Float32Array(size * size);
  for (let y = 0; y < digit.height; y++) {
    field.set(digit.values.subarray(y * digit.width, (y + 1) * digit.width), (top + y) * size + left);
  }
  return field;
}

/** Canvas RGBA bytes of a drawing or photo of one digit -> float32 [28 * 28] in [0, 1], MNIST-style. */
export function preprocessPixels(rgba, width, height) {
  return centreByMass(fitBox(cropToInk(inkOnBlack(toGrayscale(rgba, width, height)))));
}
