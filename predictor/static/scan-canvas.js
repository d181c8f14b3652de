// The clinic viewer's image canvas: the slice at full resolution, fitted to its box, with zoom,
// pan, window/level (contrast), invert and reset. Plain canvas 2D, no library; the pixels come
// from a same-origin blob, so the canvas stays readable (the tests read it back).
"use strict";

// Contrast presets over 8-bit grey values: [window width, level]; "auto" is per image.
const PRESETS = {
  full: [256, 128],
  dark: [96, 64],
  mid: [96, 128],
  bright: [96, 192],
};
const MIN_ZOOM = 0.25;
const MAX_ZOOM = 32;
const ZOOM_STEP = 1.25;
const PAN_STEP = 40; // CSS pixels per arrow key
const WIDTH_RANGE = [2, 512];
const LEVEL_RANGE = [0, 255];

const clamp = (value, lo, hi) => Math.min(hi, Math.max(lo, value));

// Linear window/level as DICOM PS3.3 C.11.2.1.2 defines it, then optional inversion: a lookup
// table from grey value to shown value. Full range (256, 128) is the identity.
function windowTable(width, level, inverted) {
  const table = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) {
    const shown = ((v - (level - 0.5)) / (width - 1) + 0.5) * 255;
    const value = clamp(Math.round(shown), 0, 255);
    table[v] = inverted ? 255 - value : value;
  }
  return table;
}

// Window/level spanning the 1st to 99th percentile of the non-black pixels.
function autoWindow(grey) {
  const counts = new Uint32Array(256);
  let total = 0;
  for (const v of grey) if (v > 8) { counts[v]++; total++; }
  if (!total) return PRESETS.full;
  const at = (fraction) => {
    let seen = 0;
    for (let v = 0; v < 256; v++) { seen += counts[v]; if (seen >= fraction * total) return v; }
    return 255;
  };
  const lo = at(0.01), hi = at(0.99);
  const width = clamp(hi - lo + 1, WIDTH_RANGE[0], WIDTH_RANGE[1]);
  return [width, clamp(Math.round((lo + hi + 1) / 2), LEVEL_RANGE[0], LEVEL_RANGE[1])];
}

class ScanCanvas {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.onChange = onChange;
    this.source = null; // offscreen canvas with the windowed image, full resolution
    this.grey = null;
    this.view = { zoom: 1, panX: 0, panY: 0, width: 256, level: 128, inverted: false, preset: "full" };
    new ResizeObserver(() => this.draw()).observe(canvas.parentElement);
  }

  // Decode the image blob at its own resolution and keep its grey values.
  async load(blob) {
    const bitmap = await createImageBitmap(blob);
    const { width, height } = bitmap;
    const work = document.createElement("canvas");
    work.width = width;
    work.height = height;
    const ctx = work.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, width, height).data;
    this.grey = new Uint8ClampedArray(width * height);
    for (let i = 0, p = 0; i < this.grey.length; i++, p += 4) {
      this.grey[i] = Math.round(0.299 * rgba[p] + 0.587 * rgba[p + 1] + 0.114 * rgba[p + 2]);
    }
    this.source = work;
    this.image = ctx.createImageData(width, height);
    this.reset();
  }

  get imageWidth() { return this.source ? this.source.width : 0; }
  get imageHeight() { return this.source ? this.source.height : 0; }

  unload() {
    this.source = this.grey = this.image = null;
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  // --- state changes (each redraws and reports)

  reset() {
    Object.assign(this.view, { zoom: 1, panX: 0, panY: 0, inverted: false });
    this.preset("full");
  }

  preset(name) {
    const [width, level] = name === "auto" ? autoWindow(this.grey || []) : PRESETS[name];
    this.view.preset = name;
    this.setWindow(width, level, name);
  }

  setWindow(width, level, preset = "custom") {
    this.view.width = clamp(Math.round(width), WIDTH_RANGE[0], WIDTH_RANGE[1]);
    this.view.level = clamp(Math.round(level), LEVEL_RANGE[0], LEVEL_RANGE[1]);
    this.view.preset = preset;
    this.applyWindow();
  }

  adjustWindow(dWidth, dLevel) {
    this.setWindow(this.view.width + dWidth, this.view.level + dLevel);
  }

  invert() {
    this.view.inverted = !this.view.inverted;
    this.applyWindow();
  }

  // Zoom by `factor` keeping the image point under (x, y) (CSS px from the box centre) still.
  zoomBy(factor, x = 0, y = 0) {
    const zoom = clamp(this.view.zoom * factor, MIN_ZOOM, MAX_ZOOM);
    const k = zoom / this.view.zoom;
    this.view.panX = x - (x - this.view.panX) * k;
    this.view.panY = y - (y - this.view.panY) * k;
    this.view.zoom = zoom;
    this.changed();
  }

  // One image pixel per screen pixel.
  actualSize() {
    const fit = this.fitScale();
    if (!fit) return;
    this.zoomBy(1 / (fit * window.devicePixelRatio * this.view.zoom));
  }

  pan(dx, dy) {
    this.view.panX += dx;
    this.view.panY += dy;
    this.changed();
  }

  panStep(dx, dy) { this.pan(dx * PAN_STEP, dy * PAN_STEP); }

  // --- rendering

  applyWindow() {
    if (!this.grey) return;
    const table = windowTable(this.view.width, this.view.level, this.view.inverted);
    const out = this.image.data;
    for (let i = 0, p = 0; i < this.grey.length; i++, p += 4) {
      const v = table[this.grey[i]];
      out[p] = out[p + 1] = out[p + 2] = v;
      out[p + 3] = 255;
    }
    this.source.getContext("2d").putImageData(this.image, 0, 0);
    this.changed();
  }

  // CSS px per image px at zoom 1: the whole slice fits the box.
  fitScale() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    if (!this.source || !box.width || !box.height) return 0;
    return Math.min(box.width / this.source.width, box.height / this.source.height);
  }

  changed() {
    this.draw();
    this.onChange(this.view);
  }

  draw() {
    const canvas = this.canvas;
    const box = canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(box.width * ratio));
    const h = Math.max(1, Math.round(box.height * ratio));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    if (!this.source) return;
    const scale = this.fitScale() * this.view.zoom * ratio; // device px per image px
    // Strongly magnified pixels stay crisp squares, as radiologists expect; below 4x, smoothed.
    ctx.imageSmoothingEnabled = scale < 4;
    ctx.imageSmoothingQuality = "high";
    ctx.setTransform(scale, 0, 0, scale,
      w / 2 + this.view.panX * ratio - (this.source.width * scale) / 2,
      h / 2 + this.view.panY * ratio - (this.source.height * scale) / 2);
    ctx.drawImage(this.source, 0, 0);
  }

  // Percent of actual size (image pixels per screen pixel), for the readout.
  actualPercent() {
    return Math.round(this.fitScale() * this.view.zoom * (window.devicePixelRatio || 1) * 100);
  }
}

// Mouse, wheel and keyboard for a ScanCanvas. `dragMode()` says what a plain drag does.
function bindScanControls(scan, dragMode) {
  const canvas = scan.canvas;
  const centred = (ev) => {
    const box = canvas.getBoundingClientRect();
    return [ev.clientX - box.left - box.width / 2, ev.clientY - box.top - box.height / 2];
  };
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (!ev.deltaY) return; // a sideways or empty wheel step
    const [x, y] = centred(ev);
    scan.zoomBy(ev.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, x, y);
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("pointerdown", (ev) => {
    const contrast = ev.button === 2 || ev.shiftKey || dragMode() === "contrast";
    drag = { x: ev.clientX, y: ev.clientY, contrast };
    canvas.setPointerCapture(ev.pointerId);
    canvas.focus();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    drag.x = ev.clientX;
    drag.y = ev.clientY;
    if (drag.contrast) scan.adjustWindow(dx * 2, dy);
    else scan.pan(dx, dy);
  });
  const stop = () => { drag = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("keydown", (ev) => {
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const step = arrows[ev.key];
    if (!step || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    ev.preventDefault();
    if (ev.shiftKey) scan.adjustWindow(step[0] * 8, -step[1] * 4);
    else scan.panStep(-step[0], -step[1]);
  });
}

// Shortcut keys for the whole page, except while typing in a field.
function scanShortcut(scan, ev) {
  const target = ev.target;
  if (ev.altKey || ev.ctrlKey || ev.metaKey) return false;
  if (target.closest && target.closest("input, textarea, select")) return false;
  const actions = {
    "+": () => scan.zoomBy(ZOOM_STEP),
    "=": () => scan.zoomBy(ZOOM_STEP),
    "-": () => scan.zoomBy(1 / ZOOM_STEP),
    "1": () => scan.actualSize(),
    "0": () => scan.reset(),
    r: () => scan.reset(),
    i: () => scan.invert(),
    a: () => scan.preset("auto"),
  };
  const action = actions[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
  if (!action || !scan.source) return false;
  action();
  return true;
}
