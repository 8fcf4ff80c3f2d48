/* rayrt image viewer: axial, coronal and sagittal views of a patient's CT (MR / PET), structure
 * outlines, dose colour wash and isodose lines, the difference of two doses.
 *
 * A classic script (no build step, no dependencies) that defines window.RayrtViewer; rayrt.js opens
 * it for "#/jobs/<id>/viewer" and "#/patients/<id>/viewer" and hands it the URLs of the service's
 * routes (its API table), so this file names no server path itself.
 *
 * Data: the viewer's description (JSON) once, then per slice change one binary answer on the
 * primary image's plane (rayrt.service.viewer.bundle) with the image (int16 HU or float32), every
 * structure's mask (packed bits [structures, rows, cols]) and each shown dose (float32 Gy), each
 * part gzip-compressed where that pays and undone here with DecompressionStream (a browser without
 * it asks for the three separate answers, gzip-encoded over HTTP). Slices are fetched when shown, kept in a small cache and the
 * neighbours of the shown slice are fetched ahead. Drawing happens at the picture's own resolution
 * in an offscreen canvas that is scaled (zoom, pan, the pixel aspect) onto the visible one.
 *
 * Timing: each slice change records the time from its request to the drawn canvas in the root
 * element's data-render-ms (and counts them in data-render-count), read by scripts/bench/viewer.py.
 *
 * Names (structures, series, plans) are untrusted: set with textContent only, never parsed as HTML.
 */
"use strict";
(function () {
  const PLANES = ["axial", "coronal", "sagittal"];
  const AXES = { k: 0, j: 1, i: 2 };
  const ISO_COLOURS = ["#ff00ff", "#ff0000", "#ff8c00", "#ffff00", "#00ff00", "#00ffff", "#0080ff", "#0000ff", "#8000ff"];
  const CACHE_ENTRIES = 96; // answers (a view answer of a 512 x 512 slice with one dose: ~1.8 MB decoded)

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.slice(0, 2) === "on" && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "value") e.value = v;
      else if (k === "checked" || k === "disabled" || k === "selected") e[k] = Boolean(v);
      else e.setAttribute(k, String(v));
    }
    for (let n = 2; n < arguments.length; n++) {
      const kid = arguments[n];
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) kid.forEach(function (x) { if (x) e.appendChild(x instanceof Node ? x : document.createTextNode(String(x))); });
      else e.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function option(value, text, selected) { return el("option", { value: value, text: text, selected: selected }); }

  function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }

  function displayColour(c) {
    // white outlines vanish on bone windows less than on white: keep them, but never pure black
    if (!Array.isArray(c) || c.length !== 3) return [255, 0, 0];
    if (c[0] + c[1] + c[2] < 60) return [128, 128, 128];
    return c;
  }

  function parseLevels(text) {
    return String(text || "").split(/[,;\s]+/).map(Number).filter(function (v) { return isFinite(v) && v > 0; })
      .sort(function (a, b) { return b - a; });
  }

  // ------------------------------------------------------------------ colour maps
  function washLut() {
    // dose colour wash: blue -> cyan -> green -> yellow -> red (256 entries)
    const stops = [[0, [0, 0, 255]], [0.25, [0, 255, 255]], [0.5, [0, 255, 0]], [0.75, [255, 255, 0]], [1, [255, 0, 0]]];
    return buildLut(stops);
  }

  function diffLut() {
    // difference: blue (A < B) -> white (equal) -> red (A > B)
    return buildLut([[0, [0, 60, 255]], [0.5, [255, 255, 255]], [1, [255, 30, 0]]]);
  }

  function buildLut(stops) {
    const lut = new Uint8Array(256 * 3);
    for (let n = 0; n < 256; n++) {
      const t = n / 255;
      let a = stops[0], b = stops[stops.length - 1];
      for (let s = 0; s < stops.length - 1; s++) if (t >= stops[s][0] && t <= stops[s + 1][0]) { a = stops[s]; b = stops[s + 1]; break; }
      const w = b[0] > a[0] ? (t - a[0]) / (b[0] - a[0]) : 0;
      for (let ch = 0; ch < 3; ch++) lut[3 * n + ch] = Math.round(a[1][ch] + w * (b[1][ch] - a[1][ch]));
    }
    return lut;
  }
  const WASH = washLut();
  const DIFF = diffLut();

  function lutCss(lut, t) {
    const n = Math.max(0, Math.min(255, Math.round(t * 255)));
    return "rgb(" + lut[3 * n] + "," + lut[3 * n + 1] + "," + lut[3 * n + 2] + ")";
  }

  // ------------------------------------------------------------------ the viewer
  function open(root, opts) {
    let stopped = false;
    let info = null;
    const cache = new Map(); // url -> Promise of a decoded slice
    const state = {
      series: null, width: 400, level: 40, preset: "soft tissue",
      shown: {}, // structure index -> bool
      doseA: "", doseB: "", diff: false, wash: true, lines: true, opacity: 0.45,
      isoUnit: "pct", isoRef: null, isoLevels: "107, 95, 80, 50, 20", washFloorPct: 10,
      idx: { axial: 0, coronal: 0, sagittal: 0 },
    };
    const panes = {};
    let renderCount = 0;

    root.classList.add("viewer");
    root.dataset.renderMs = "";
    root.dataset.renderCount = "0";
    const msg = el("div", { class: "viewer-msg", role: "status" });
    const toolbar = el("div", { class: "viewer-tools" });
    const side = el("div", { class: "viewer-side" });
    const stage = el("div", { class: "viewer-panes" });
    const readout = el("div", { id: "viewer-readout", class: "viewer-readout", role: "status", text: "Click an image to read its values here." });
    const legend = el("div", { class: "viewer-legend" });
    root.append(toolbar, msg, el("div", { class: "viewer-body" }, stage, side), readout, legend);

    function say(text, bad) {
      msg.textContent = text || "";
      msg.className = "viewer-msg" + (bad ? " err" : "");
    }

    // -------------------------------------------------------------- data
    // one slice answer: its bytes (uncompressed) and headers -> {rows, cols, dtype, arr | bits, n, key}
    function decodePart(buf, header) {
      const rows = parseInt(header("X-Rows"), 10), cols = parseInt(header("X-Cols"), 10);
      const dtype = header("X-Dtype");
      const out = { rows: rows, cols: cols, dtype: dtype, key: header("X-Structure-Key") };
      if (dtype === "int16") out.arr = new Int16Array(buf);
      else if (dtype === "float32") out.arr = new Float32Array(buf);
      else if (dtype === "bits") { out.bits = new Uint8Array(buf); out.n = parseInt(header("X-Structures"), 10) || 0; }
      else throw new Error("unknown slice type " + dtype);
      return out;
    }

    async function fetchOk(url) {
      const res = await fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/octet-stream" } });
      if (res.status === 401 && opts.onUnauthorized) opts.onUnauthorized();
      if (!res.ok) {
        let text = res.status + " " + res.statusText;
        try { const b = await res.json(); if (b && typeof b.message === "string") text = b.message; } catch (_) { /* not JSON */ }
        throw new Error(text);
      }
      return res;
    }

    // a separate slice answer (the browser has undone its gzip Content-Encoding)
    async function fetchBin(url) {
      const res = await fetchOk(url);
      const buf = await res.arrayBuffer();
      return decodePart(buf, function (name) { return res.headers.get(name); });
    }

    function gunzip(bytes) {
      return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
    }

    // a view answer (rayrt.service.viewer.bundle): "RRTV", uint32 header length, JSON header, parts
    async function fetchView(url) {
      const res = await fetchOk(url);
      const buf = await res.arrayBuffer();
      const u8 = new Uint8Array(buf);
      if (String.fromCharCode(u8[0], u8[1], u8[2], u8[3]) !== "RRTV") throw new Error("not a view answer");
      const n = new DataView(buf).getUint32(4, true);
      const head = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + n)));
      const base = 8 + n, out = {};
      await Promise.all(head.parts.map(async function (p) {
        const bytes = u8.subarray(base + p.offset, base + p.offset + p.length);
        const ab = p.gzip ? await gunzip(bytes) : bytes.slice().buffer;
        out[p.name] = decodePart(ab, function (name) { return p.headers[name]; });
      }));
      return out;
    }

    function getBin(url, view) {
      let p = cache.get(url);
      if (p) { cache.delete(url); cache.set(url, p); return p; }
      p = view ? fetchView(url) : fetchBin(url);
      cache.set(url, p);
      p.catch(function () { cache.delete(url); });
      while (cache.size > CACHE_ENTRIES) cache.delete(cache.keys().next().value);
      return p;
    }

    function doseById(id) { return (info.doses || []).find(function (d) { return d.id === id; }) || null; }

    function doseUrl(d, plane, index) {
      if (d.kind === "plan") return opts.urls.planDose(info.job_id, d.machine, plane, index);
      return opts.urls.uploadDose(info.patient_id, d.index, plane, index);
    }

    // one request per slice change (image, masks and doses together) where the browser can undo
    // the parts' gzip itself (DecompressionStream); three separate answers otherwise
    const USE_VIEWS = typeof window.DecompressionStream === "function" && typeof opts.urls.view === "function";

    function shownDoses() {
      const a = state.doseA ? doseById(state.doseA) : null;
      const b = a && state.diff && state.doseB ? doseById(state.doseB) : null;
      return { a: a, b: b };
    }

    function viewUrl(plane, index) {
      const sd = shownDoses();
      const ids = [sd.a, sd.b].filter(Boolean).map(function (d) { return d.id; });
      return opts.urls.view(info, plane, index, state.series && !state.series.primary ? state.series.key : null, ids);
    }

    function urlsFor(plane, index) {
      const u = {
        img: opts.urls.slice(info.patient_id, plane, index, state.series && !state.series.primary ? state.series.key : null),
        masks: opts.urls.masks(info.patient_id, plane, index, info.structure_key),
      };
      const a = state.doseA ? doseById(state.doseA) : null;
      const b = state.diff && state.doseB ? doseById(state.doseB) : null;
      if (a) u.doseA = doseUrl(a, plane, index);
      if (a && b) u.doseB = doseUrl(b, plane, index);
      return u;
    }

    async function sliceData(plane, index) {
      if (USE_VIEWS) {
        const parts = await getBin(viewUrl(plane, index), true);
        const sd = shownDoses();
        const d = { plane: plane, index: index, img: parts.image, masks: parts.masks };
        if (sd.a) d.doseA = parts["dose:" + sd.a.id];
        if (sd.b) d.doseB = parts["dose:" + sd.b.id];
        return d;
      }
      const u = urlsFor(plane, index);
      const names = Object.keys(u);
      const got = await Promise.all(names.map(function (k) { return getBin(u[k]); }));
      const d = { plane: plane, index: index };
      names.forEach(function (k, n) { d[k] = got[n]; });
      return d;
    }

    // a click in one view moves the other two: both new slices in one answer (?also=), each put in
    // the cache under its own view URL, where show() then finds it (one request instead of two)
    function primeTogether(changes) {
      if (!USE_VIEWS || changes.length < 2) return;
      const urls = changes.map(function (c) { return viewUrl(c.plane, c.index); });
      if (urls.some(function (u) { return cache.has(u); })) return;
      const also = changes.slice(1).map(function (c) { return "also=" + encodeURIComponent(c.plane + ":" + c.index); });
      const all = fetchView(urls[0] + "&" + also.join("&"));
      changes.forEach(function (c, n) {
        const prefix = n === 0 ? "" : c.plane + "@" + c.index + "/";
        const one = all.then(function (parts) {
          const out = {};
          for (const name of Object.keys(parts)) {
            if (n === 0 ? name.indexOf("/") < 0 : name.indexOf(prefix) === 0) out[name.slice(prefix.length)] = parts[name];
          }
          return out;
        });
        cache.set(urls[n], one);
        one.catch(function () { cache.delete(urls[n]); });
      });
      while (cache.size > CACHE_ENTRIES) cache.delete(cache.keys().next().value);
    }

    function prefetch(plane, index, dir) {
      const n = info.planes.find(function (p) { return p.plane === plane; }).count;
      const steps = dir ? [dir, 2 * dir] : [1, -1];
      for (const s of steps) {
        const i = index + s;
        if (i < 0 || i >= n) continue;
        if (USE_VIEWS) { getBin(viewUrl(plane, i), true).catch(function () { /* shown when it is the current slice */ }); continue; }
        const u = urlsFor(plane, i);
        for (const k of Object.keys(u)) getBin(u[k]).catch(function () { /* shown when it is the current slice */ });
      }
    }

    // -------------------------------------------------------------- outlines, once per slice
    // The boundary between pixels inside and outside a region, as segments along pixel edges in
    // picture units [x0, y0, x1, y1, ...] (runs along a row or column merged), scanned only inside the
    // region's bounding box: drawn on the visible canvas as thin lines at any zoom.
    function boundary(inside, rows, cols, r0, r1, c0, c1) {
      const seg = [];
      for (let r = r0; r <= r1 + 1; r++) { // horizontal edges above row r
        let start = -1;
        for (let c = c0; c <= c1 + 1; c++) {
          let e = false;
          if (c <= c1) {
            const a = r > 0 ? inside[(r - 1) * cols + c] : 0, b = r < rows ? inside[r * cols + c] : 0;
            e = a !== b;
          }
          if (e && start < 0) start = c;
          else if (!e && start >= 0) { seg.push(start, r, c, r); start = -1; }
        }
      }
      for (let c = c0; c <= c1 + 1; c++) { // vertical edges left of column c
        let start = -1;
        for (let r = r0; r <= r1 + 1; r++) {
          let e = false;
          if (r <= r1) {
            const a = c > 0 ? inside[r * cols + c - 1] : 0, b = c < cols ? inside[r * cols + c] : 0;
            e = a !== b;
          }
          if (e && start < 0) start = r;
          else if (!e && start >= 0) { seg.push(c, start, c, r); start = -1; }
        }
      }
      return Float32Array.from(seg);
    }

    // structure s of a mask answer: {inside: Uint8Array, segs} (null when it is not on this slice)
    function outline(m, s) {
      m.outline = m.outline || {};
      if (m.outline[s] !== undefined) return m.outline[s];
      const rows = m.rows, cols = m.cols, npx = rows * cols, base = s * npx, bits = m.bits;
      const inside = new Uint8Array(npx);
      let r0 = rows, r1 = -1, c0 = cols, c1 = -1;
      const b0 = base >> 3, b1 = (base + npx - 1) >> 3;
      for (let b = b0; b <= b1; b++) {
        const byte = bits[b];
        if (byte === 0) continue;
        for (let t = 0; t < 8; t++) {
          if (!(byte & (0x80 >> t))) continue;
          const p = b * 8 + t - base;
          if (p < 0 || p >= npx) continue;
          inside[p] = 1;
          const r = (p / cols) | 0, c = p - r * cols;
          if (r < r0) r0 = r;
          if (r > r1) r1 = r;
          if (c < c0) c0 = c;
          if (c > c1) c1 = c;
        }
      }
      m.outline[s] = r1 < 0 ? null : { inside: inside, segs: boundary(inside, rows, cols, r0, r1, c0, c1) };
      return m.outline[s];
    }

    // the isodose line of `level` Gy on a dose answer (cached on it)
    function isodose(d, level) {
      d.iso = d.iso || {};
      const key = level.toFixed(4);
      if (d.iso[key] !== undefined) return d.iso[key];
      const A = d.arr, rows = d.rows, cols = d.cols;
      const inside = new Uint8Array(rows * cols);
      let r0 = rows, r1 = -1, c0 = cols, c1 = -1;
      for (let r = 0; r < rows; r++) {
        const o = r * cols;
        for (let c = 0; c < cols; c++) {
          if (A[o + c] >= level) {
            inside[o + c] = 1;
            if (r < r0) r0 = r;
            r1 = r;
            if (c < c0) c0 = c;
            if (c > c1) c1 = c;
          }
        }
      }
      d.iso[key] = r1 < 0 ? null : boundary(inside, rows, cols, r0, r1, c0, c1);
      return d.iso[key];
    }

    // -------------------------------------------------------------- drawing
    let grayLut = null, grayKey = "";
    function gray16() {
      const key = state.width + "/" + state.level;
      if (grayLut && grayKey === key) return grayLut;
      grayLut = new Uint8Array(65536);
      const lo = state.level - state.width / 2, s = 255 / Math.max(state.width, 1e-6);
      for (let v = -32768; v < 32768; v++) {
        const g = (v - lo) * s;
        grayLut[v + 32768] = g <= 0 ? 0 : g >= 255 ? 255 : g;
      }
      grayKey = key;
      return grayLut;
    }

    function isoLevelsGy() {
      const ref = Number(state.isoRef) || 0;
      const lv = parseLevels(state.isoLevels);
      return state.isoUnit === "pct" ? lv.map(function (p) { return p * ref / 100; }) : lv;
    }

    function compose(pane, d) {
      const rows = d.img.rows, cols = d.img.cols, npx = rows * cols;
      if (pane.off.width !== cols || pane.off.height !== rows) { pane.off.width = cols; pane.off.height = rows; pane.image = null; }
      if (!pane.image) pane.image = pane.offCtx.createImageData(cols, rows);
      const px = pane.image.data;
      const a = d.img.arr;
      if (d.img.dtype === "int16") {
        const lut = gray16();
        for (let p = 0, q = 0; p < npx; p++, q += 4) { const g = lut[a[p] + 32768]; px[q] = g; px[q + 1] = g; px[q + 2] = g; px[q + 3] = 255; }
      } else {
        const lo = state.level - state.width / 2, s = 255 / Math.max(state.width, 1e-6);
        for (let p = 0, q = 0; p < npx; p++, q += 4) { let g = (a[p] - lo) * s; g = g < 0 ? 0 : g > 255 ? 255 : g; px[q] = g; px[q + 1] = g; px[q + 2] = g; px[q + 3] = 255; }
      }
      const A = d.doseA ? d.doseA.arr : null, B = d.doseB ? d.doseB.arr : null;
      const op = Number(state.opacity);
      if (A && B) {
        // difference A - B: diverging colours, transparent where they agree
        const range = Math.max(0.05 * (Number(state.isoRef) || 1), 1e-6);
        for (let p = 0, q = 0; p < npx; p++, q += 4) {
          const v = A[p] - B[p];
          const t = v / range;
          const m = Math.min(1, Math.abs(t));
          if (m < 0.02 || !state.wash) continue;
          const n = Math.round((Math.max(-1, Math.min(1, t)) + 1) * 127.5) * 3;
          const al = op * (0.35 + 0.65 * m);
          px[q] += (DIFF[n] - px[q]) * al; px[q + 1] += (DIFF[n + 1] - px[q + 1]) * al; px[q + 2] += (DIFF[n + 2] - px[q + 2]) * al;
        }
      } else if (A) {
        const ref = Number(state.isoRef) || 1;
        const lo = ref * state.washFloorPct / 100, hi = Math.max(ref * 1.1, lo + 1e-6);
        if (state.wash) {
          const s = 255 / (hi - lo);
          for (let p = 0, q = 0; p < npx; p++, q += 4) {
            const v = A[p];
            if (!(v >= lo)) continue;
            const n = Math.min(255, Math.floor((v - lo) * s)) * 3;
            px[q] += (WASH[n] - px[q]) * op; px[q + 1] += (WASH[n + 1] - px[q + 1]) * op; px[q + 2] += (WASH[n + 2] - px[q + 2]) * op;
          }
        }
      }
      pane.offCtx.putImageData(pane.image, 0, 0);
    }

    function geometry(pane) {
      const p = pane.info, W = pane.canvas.width, H = pane.canvas.height;
      const fit = Math.min(W / (p.cols * p.col_mm), H / (p.rows * p.row_mm));
      const sx = fit * p.col_mm * pane.zoom, sy = fit * p.row_mm * pane.zoom;
      return { sx: sx, sy: sy, ox: (W - p.cols * sx) / 2 + pane.panX, oy: (H - p.rows * sy) / 2 + pane.panY };
    }

    function pictureIndex(pane, axisName, arrayIndex) {
      // the picture row / column that shows array index `arrayIndex` along `axisName`
      const p = pane.info;
      const n = info.grid.shape[AXES[axisName]];
      if (axisName === p.row_axis) return p.row_flip ? n - 1 - arrayIndex : arrayIndex;
      return p.col_flip ? n - 1 - arrayIndex : arrayIndex;
    }

    function arrayIndex(pane, axisName, pictureIdx) {
      return pictureIndex(pane, axisName, pictureIdx); // the flip is its own inverse
    }

    function present(pane) {
      const ctx = pane.ctx, W = pane.canvas.width, H = pane.canvas.height;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, W, H);
      if (!pane.data) return;
      const g = geometry(pane), p = pane.info;
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(pane.off, g.ox, g.oy, p.cols * g.sx, p.rows * g.sy);
      Object.assign(pane.canvas.dataset, { sx: g.sx.toFixed(4), sy: g.sy.toFixed(4), ox: g.ox.toFixed(2), oy: g.oy.toFixed(2), index: String(pane.data.index) });
      const d = pane.data;
      function stroke(segs, colour, width) {
        ctx.strokeStyle = colour;
        ctx.lineWidth = width;
        ctx.beginPath();
        for (let n = 0; n < segs.length; n += 4) {
          ctx.moveTo(g.ox + segs[n] * g.sx, g.oy + segs[n + 1] * g.sy);
          ctx.lineTo(g.ox + segs[n + 2] * g.sx, g.oy + segs[n + 3] * g.sy);
        }
        ctx.stroke();
      }
      // isodose lines: edges of the dose thresholded at each level (not in the difference view)
      if (d.doseA && !d.doseB && state.lines) {
        isoLevelsGy().forEach(function (lv, n) {
          const segs = isodose(d.doseA, lv);
          if (segs) stroke(segs, ISO_COLOURS[n % ISO_COLOURS.length], 1.5);
        });
      }
      // structure outlines: edges of the mask pixels, in the structure's colour
      if (d.masks && d.masks.rows === p.rows && d.masks.cols === p.cols) {
        for (const st of info.structures) {
          if (!state.shown[st.index] || st.index >= d.masks.n) continue;
          const o = outline(d.masks, st.index);
          if (o) stroke(o.segs, rgb(displayColour(st.colour)), 2);
        }
      }
      // crosshair: where the other two planes cut this one
      ctx.strokeStyle = "rgba(255, 215, 0, 0.55)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (const other of PLANES) {
        if (other === pane.plane) continue;
        const ax = panes[other].info.axis;
        const at = pictureIndex(pane, ax, state.idx[other]);
        if (ax === p.row_axis) { const y = Math.round(g.oy + (at + 0.5) * g.sy) + 0.5; ctx.moveTo(0, y); ctx.lineTo(W, y); }
        else if (ax === p.col_axis) { const x = Math.round(g.ox + (at + 0.5) * g.sx) + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, H); }
      }
      ctx.stroke();
    }

    function label(pane) {
      const p = pane.info, i = state.idx[pane.plane];
      const pos = p.positions_mm[i];
      const axisMm = { axial: "z", coronal: "y", sagittal: "x" }[pane.plane];
      pane.label.textContent = pane.plane + " " + (i + 1) + " / " + p.count + " · " + axisMm + " = " + (pos === undefined ? "?" : Number(pos).toFixed(1)) + " mm";
    }

    // show slice state.idx[plane] in its pane; t0: when the change was asked for (for data-render-ms)
    async function show(plane, t0, dir) {
      const pane = panes[plane];
      const gen = ++pane.gen;
      const index = state.idx[plane];
      label(pane);
      let d;
      try {
        d = await sliceData(plane, index);
      } catch (e) {
        if (!stopped && gen === pane.gen) say(plane + " slice " + (index + 1) + ": " + (e.message || e), true);
        return;
      }
      if (stopped || gen !== pane.gen) return; // a newer slice was asked for meanwhile
      if (d.masks && d.masks.key && d.masks.key !== info.structure_key) { reload("the structures changed: reloaded"); return; }
      pane.data = d;
      const tDraw = performance.now();
      compose(pane, d);
      present(pane);
      if (t0 !== undefined && t0 !== null) {
        const ms = performance.now() - t0;
        root.dataset.drawMs = (performance.now() - tDraw).toFixed(1); // of which drawing (the rest: the data)
        renderCount += 1;
        root.dataset.renderMs = ms.toFixed(1);
        root.dataset.renderCount = String(renderCount);
        root.dataset.renderPlane = plane;
      }
      prefetch(plane, index, dir || 0);
    }

    function redraw(plane) {
      const pane = panes[plane];
      if (!pane.data) return;
      compose(pane, pane.data);
      present(pane);
    }

    function redrawAll() { for (const p of PLANES) redraw(p); }
    function presentAll() { for (const p of PLANES) present(panes[p]); }
    function refetchAll() { const t0 = performance.now(); for (const p of PLANES) show(p, t0); }

    function setIndex(plane, index, dir) {
      const n = panes[plane].info.count;
      index = Math.max(0, Math.min(n - 1, index));
      if (index === state.idx[plane]) return false;
      state.idx[plane] = index;
      const t0 = performance.now();
      show(plane, t0, dir);
      for (const other of PLANES) if (other !== plane) present(panes[other]); // crosshairs move
      return true;
    }

    // -------------------------------------------------------------- reading values
    function readAt(pane, r, c) {
      const d = pane.data;
      if (!d) return;
      const p = r * d.img.cols + c;
      const parts = [];
      const unit = state.series && state.series.modality !== "CT" ? (state.series.units || "value") : "HU";
      const v = d.img.arr[p];
      parts.push(unit === "HU" ? "HU " + Math.round(v) : unit + " " + Number(v).toFixed(2));
      readout.dataset.hu = String(v);
      delete readout.dataset.dose;
      delete readout.dataset.diff;
      if (d.doseA) {
        const a = d.doseA.arr[p];
        readout.dataset.dose = String(a);
        if (d.doseB) {
          const b = d.doseB.arr[p];
          parts.push("dose " + a.toFixed(2) + " Gy (" + doseLabel(state.doseA) + ") − " + b.toFixed(2) + " Gy (" + doseLabel(state.doseB) + ") = " + (a - b).toFixed(2) + " Gy");
          readout.dataset.diff = String(a - b);
        } else {
          const ref = Number(state.isoRef);
          parts.push("dose " + a.toFixed(2) + " Gy" + (ref > 0 ? " (" + (100 * a / ref).toFixed(1) + " %)" : ""));
        }
      }
      const inside = [];
      if (d.masks) for (const st of info.structures) {
        const o = outline(d.masks, st.index);
        if (o && o.inside[p]) inside.push(st.name);
      }
      const kji = [0, 0, 0];
      kji[AXES[pane.info.axis]] = d.index;
      kji[AXES[pane.info.row_axis]] = arrayIndex(pane, pane.info.row_axis, r);
      kji[AXES[pane.info.col_axis]] = arrayIndex(pane, pane.info.col_axis, c);
      readout.dataset.reads = String((Number(readout.dataset.reads) || 0) + 1);
      readout.textContent = parts.join(" / ") + (inside.length ? " · in " + inside.join(", ") : "") + " · voxel (k, j, i) = (" + kji.join(", ") + ")";
    }

    function doseLabel(id) { const d = doseById(id); return d ? d.label : id; }

    // -------------------------------------------------------------- mouse
    function attach(pane) {
      const cv = pane.canvas;
      let drag = null;
      cv.addEventListener("wheel", function (ev) {
        ev.preventDefault();
        if (ev.ctrlKey || ev.metaKey) {
          const rect = cv.getBoundingClientRect();
          zoomAt(pane, ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - rect.left, ev.clientY - rect.top);
          return;
        }
        const dir = ev.deltaY > 0 ? 1 : ev.deltaY < 0 ? -1 : 0;
        if (dir) setIndex(pane.plane, state.idx[pane.plane] + dir, dir);
      }, { passive: false });
      cv.addEventListener("keydown", function (ev) {
        // keyboard: arrows / page keys = slice, + / - = zoom (the canvas has the focus)
        const step = { ArrowUp: -1, ArrowLeft: -1, PageUp: -5, ArrowDown: 1, ArrowRight: 1, PageDown: 5 }[ev.key];
        if (step) { ev.preventDefault(); setIndex(pane.plane, state.idx[pane.plane] + step, step > 0 ? 1 : -1); }
        else if (ev.key === "+" || ev.key === "=") { ev.preventDefault(); zoomAt(pane, 1.25); }
        else if (ev.key === "-") { ev.preventDefault(); zoomAt(pane, 0.8); }
      });
      cv.addEventListener("mousedown", function (ev) {
        cv.focus();
        if (ev.button !== 0) return;
        drag = { x: ev.clientX, y: ev.clientY, panX: pane.panX, panY: pane.panY, moved: false };
        ev.preventDefault();
      });
      window.addEventListener("mousemove", onMove);
      window.addEventListener("mouseup", onUp);
      function onMove(ev) {
        if (!drag) return;
        const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
        if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
        drag.moved = true;
        pane.panX = drag.panX + dx;
        pane.panY = drag.panY + dy;
        present(pane);
      }
      function onUp(ev) {
        if (!drag) return;
        const was = drag;
        drag = null;
        if (was.moved || ev.target !== cv) return;
        const rect = cv.getBoundingClientRect();
        clickAt(pane, ev.clientX - rect.left, ev.clientY - rect.top);
      }
      pane.detach = function () { window.removeEventListener("mousemove", onMove); window.removeEventListener("mouseup", onUp); };
    }

    function clickAt(pane, x, y) {
      const g = geometry(pane), p = pane.info;
      const c = Math.floor((x - g.ox) / g.sx), r = Math.floor((y - g.oy) / g.sy);
      if (r < 0 || c < 0 || r >= p.rows || c >= p.cols) return;
      const changes = [];
      for (const other of PLANES) {
        if (other === pane.plane) continue;
        const ax = panes[other].info.axis;
        const n = panes[other].info.count;
        const index = ax === p.row_axis ? arrayIndex(pane, ax, r) : ax === p.col_axis ? arrayIndex(pane, ax, c) : null;
        if (index === null) continue;
        const clamped = Math.max(0, Math.min(n - 1, index));
        if (clamped !== state.idx[other]) changes.push({ plane: other, index: clamped });
      }
      primeTogether(changes);
      for (const ch of changes) setIndex(ch.plane, ch.index);
      present(pane);
      readAt(pane, r, c);
    }

    function zoomAt(pane, factor, x, y) {
      if (x === undefined) { x = pane.canvas.width / 2; y = pane.canvas.height / 2; }
      const g = geometry(pane);
      const px = (x - g.ox) / g.sx, py = (y - g.oy) / g.sy; // the picture point under (x, y) stays there
      pane.zoom = Math.max(0.25, Math.min(16, pane.zoom * factor));
      const g2 = geometry(pane);
      pane.panX += x - (g2.ox + px * g2.sx);
      pane.panY += y - (g2.oy + py * g2.sy);
      present(pane);
    }

    // -------------------------------------------------------------- controls
    function buildTools() {
      const seriesSel = el("select", { "aria-label": "image series", class: "v-series" });
      info.series.forEach(function (s, n) {
        seriesSel.append(option(String(n), s.modality + (s.description ? " · " + s.description : "") + (s.primary ? " (primary)" : ""), s === state.series));
      });
      seriesSel.addEventListener("change", function () { state.series = info.series[Number(seriesSel.value)]; applyPreset(0); fillPresets(); refetchAll(); });

      const presetSel = el("select", { "aria-label": "window preset", class: "v-preset" });
      const wIn = el("input", { type: "number", class: "short", "aria-label": "window width", step: "any" });
      const lIn = el("input", { type: "number", class: "short", "aria-label": "window level", step: "any" });
      function fillPresets() {
        presetSel.replaceChildren();
        state.series.windows.forEach(function (w, n) { presetSel.append(option(String(n), w.name + " (" + w.width + " / " + w.level + ")", w.name === state.preset)); });
        presetSel.append(option("custom", "custom", state.preset === "custom"));
        wIn.value = String(state.width);
        lIn.value = String(state.level);
      }
      function applyPreset(n) {
        const w = state.series.windows[n];
        if (!w) return;
        state.width = w.width; state.level = w.level; state.preset = w.name;
      }
      presetSel.addEventListener("change", function () {
        if (presetSel.value === "custom") return;
        applyPreset(Number(presetSel.value));
        wIn.value = String(state.width); lIn.value = String(state.level);
        redrawAll();
      });
      function custom() {
        const w = Number(wIn.value), l = Number(lIn.value);
        if (!(w > 0) || !isFinite(l)) return;
        state.width = w; state.level = l; state.preset = "custom"; presetSel.value = "custom";
        redrawAll();
      }
      wIn.addEventListener("change", custom);
      lIn.addEventListener("change", custom);
      fillPresets();

      const zoomOut = el("button", { type: "button", class: "v-zoom-out", title: "zoom out (ctrl + wheel on an image)", text: "−" });
      const zoomIn = el("button", { type: "button", class: "v-zoom-in", title: "zoom in (ctrl + wheel on an image)", text: "+" });
      const zoomReset = el("button", { type: "button", class: "v-zoom-reset", text: "fit" });
      zoomOut.addEventListener("click", function () { for (const p of PLANES) zoomAt(panes[p], 0.8); });
      zoomIn.addEventListener("click", function () { for (const p of PLANES) zoomAt(panes[p], 1.25); });
      zoomReset.addEventListener("click", function () { for (const p of PLANES) { panes[p].zoom = 1; panes[p].panX = 0; panes[p].panY = 0; present(panes[p]); } });

      // dose
      const doseSel = el("select", { "aria-label": "dose", class: "v-dose" }, option("", "no dose", !state.doseA));
      const bSel = el("select", { "aria-label": "dose B", class: "v-dose-b" });
      for (const d of info.doses) {
        doseSel.append(option(d.id, d.label + " · max " + Number(d.max_gy).toFixed(1) + " Gy", d.id === state.doseA));
        bSel.append(option(d.id, d.label, d.id === state.doseB));
      }
      const diffChk = el("input", { type: "checkbox", class: "v-diff", checked: state.diff });
      const washChk = el("input", { type: "checkbox", class: "v-wash", checked: state.wash });
      const linesChk = el("input", { type: "checkbox", class: "v-lines", checked: state.lines });
      const opacity = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: String(state.opacity), class: "v-opacity", "aria-label": "wash opacity" });
      const unitSel = el("select", { "aria-label": "isodose unit", class: "v-iso-unit" }, option("pct", "% of", state.isoUnit === "pct"), option("gy", "Gy", state.isoUnit === "gy"));
      const refIn = el("input", { type: "number", class: "short v-iso-ref", step: "any", min: "0", "aria-label": "reference dose (Gy)", value: String(state.isoRef) });
      const levelsIn = el("input", { type: "text", class: "v-iso-levels", "aria-label": "isodose levels", value: state.isoLevels, size: 18 });
      const refLabel = el("span", { class: "muted small", text: "Gy" });
      doseSel.addEventListener("change", function () { state.doseA = doseSel.value; if (!state.doseA) state.diff = diffChk.checked = false; updateLegend(); refetchAll(); });
      bSel.addEventListener("change", function () { state.doseB = bSel.value; if (state.diff) refetchAll(); updateLegend(); });
      diffChk.addEventListener("change", function () {
        state.diff = diffChk.checked && !!state.doseA;
        diffChk.checked = state.diff;
        root.classList.toggle("v-diff-on", state.diff);
        updateLegend();
        refetchAll();
      });
      washChk.addEventListener("change", function () { state.wash = washChk.checked; redrawAll(); });
      linesChk.addEventListener("change", function () { state.lines = linesChk.checked; presentAll(); });
      opacity.addEventListener("input", function () { state.opacity = Number(opacity.value); redrawAll(); });
      unitSel.addEventListener("change", function () {
        const ref = Number(state.isoRef) || 1;
        const lv = parseLevels(levelsIn.value);
        state.isoUnit = unitSel.value;
        levelsIn.value = state.isoLevels = lv.map(function (v) { return state.isoUnit === "gy" ? +(v * ref / 100).toFixed(2) : +(100 * v / ref).toFixed(1); }).join(", ");
        refIn.disabled = state.isoUnit === "gy";
        updateLegend();
        redrawAll();
      });
      refIn.addEventListener("change", function () { if (Number(refIn.value) > 0) { state.isoRef = Number(refIn.value); updateLegend(); redrawAll(); } });
      levelsIn.addEventListener("change", function () { state.isoLevels = levelsIn.value; updateLegend(); redrawAll(); });

      toolbar.replaceChildren(
        el("span", { class: "v-group" }, el("label", null, "series ", seriesSel), " ", el("label", null, "window ", presetSel), " ",
          el("label", null, "W ", wIn), " ", el("label", null, "L ", lIn)),
        el("span", { class: "v-group" }, "zoom ", zoomOut, zoomIn, zoomReset),
        info.doses.length ? el("span", { class: "v-group" }, el("label", null, "dose ", doseSel), " ",
          el("label", { class: "chk" }, diffChk, " difference A − B: "), bSel) : el("span", { class: "muted", text: "no dose to show" }),
        info.doses.length ? el("span", { class: "v-group" }, el("label", { class: "chk" }, washChk, " wash"), " ", el("label", null, "opacity ", opacity), " ",
          el("label", { class: "chk" }, linesChk, " isodoses"), " ", levelsIn, " ", unitSel, " ", refIn, " ", refLabel) : null);
    }

    function buildStructures() {
      const list = el("div", { class: "v-structures" });
      const all = el("button", { type: "button", class: "link", text: "all" });
      const none = el("button", { type: "button", class: "link", text: "none" });
      const boxes = [];
      for (const st of info.structures) {
        if (state.shown[st.index] === undefined) state.shown[st.index] = true;
        const chk = el("input", { type: "checkbox", checked: state.shown[st.index], "data-structure": st.name });
        chk.addEventListener("change", function () { state.shown[st.index] = chk.checked; presentAll(); });
        boxes.push(chk);
        const sw = el("span", { class: "swatch" });
        sw.style.background = rgb(displayColour(st.colour)); // CSSOM: allowed by the CSP
        const jump = el("button", { type: "button", class: "link v-goto", title: "go to the middle of " + st.name, text: "→" });
        jump.addEventListener("click", function () { goTo(st); });
        list.append(el("label", { class: "chk v-structure" }, chk, sw, " ", el("span", { text: st.name }), " ", st.box ? jump : null));
      }
      all.addEventListener("click", function () { boxes.forEach(function (b) { b.checked = true; }); info.structures.forEach(function (s) { state.shown[s.index] = true; }); presentAll(); });
      none.addEventListener("click", function () { boxes.forEach(function (b) { b.checked = false; }); info.structures.forEach(function (s) { state.shown[s.index] = false; }); presentAll(); });
      side.replaceChildren(el("h3", { text: "Structures" }), el("p", { class: "small" }, all, " · ", none), info.structures.length ? list : el("p", { class: "muted", text: "No structures." }));
    }

    function goTo(st) {
      const b = st.box;
      const centre = { k: Math.floor((b[0] + b[1] - 1) / 2), j: Math.floor((b[2] + b[3] - 1) / 2), i: Math.floor((b[4] + b[5] - 1) / 2) };
      for (const p of PLANES) setIndex(p, centre[panes[p].info.axis]);
    }

    function updateLegend() {
      legend.replaceChildren();
      if (!state.doseA) return;
      if (state.diff && state.doseB) {
        const range = 0.05 * (Number(state.isoRef) || 1);
        legend.append(el("span", { class: "muted", text: "A − B: " }));
        [-1, -0.5, 0, 0.5, 1].forEach(function (t) {
          const sw = el("span", { class: "swatch" });
          sw.style.background = lutCss(DIFF, (t + 1) / 2);
          legend.append(sw, el("span", { class: "small", text: " " + (t * range).toFixed(2) + " Gy " }));
        });
        return;
      }
      const ref = Number(state.isoRef) || 0;
      legend.append(el("span", { class: "muted", text: "isodoses: " }));
      isoLevelsGy().forEach(function (lv, n) {
        const sw = el("span", { class: "swatch" });
        sw.style.background = ISO_COLOURS[n % ISO_COLOURS.length];
        legend.append(sw, el("span", { class: "small", text: " " + lv.toFixed(2) + " Gy" + (ref > 0 ? " (" + (100 * lv / ref).toFixed(0) + " %)" : "") + "  " }));
      });
    }

    function buildPanes() {
      stage.replaceChildren();
      for (const p of info.planes) {
        const old = panes[p.plane];
        if (old && old.detach) old.detach();
        const canvas = el("canvas", { class: "v-canvas", "data-plane": p.plane, width: 360, height: 360, tabindex: "0", "aria-label": p.plane + " view" });
        const off = document.createElement("canvas");
        const pane = {
          plane: p.plane, info: p, canvas: canvas, ctx: canvas.getContext("2d"), off: off, offCtx: off.getContext("2d"),
          label: el("div", { class: "v-label" }), zoom: old ? old.zoom : 1, panX: old ? old.panX : 0, panY: old ? old.panY : 0, gen: 0, data: null, image: null,
        };
        panes[p.plane] = pane;
        attach(pane);
        stage.append(el("figure", { class: "v-pane", "data-plane": p.plane }, pane.label, canvas));
      }
      resize();
    }

    function resize() {
      const avail = Math.max(240, stage.clientWidth || root.clientWidth || 1100);
      const size = Math.max(200, Math.min(520, Math.floor(avail / 3) - 14));
      for (const p of PLANES) {
        const pane = panes[p];
        if (!pane) continue;
        if (pane.canvas.width !== size) { pane.canvas.width = size; pane.canvas.height = size; }
        present(pane);
      }
    }

    // -------------------------------------------------------------- start
    async function load(keepView) {
      info = await opts.info();
      if (stopped) return;
      const keepSeries = state.series && info.series.find(function (s) { return s.key === state.series.key; });
      state.series = keepSeries || info.series.find(function (s) { return s.primary; }) || info.series[0];
      if (!keepView) {
        const w = state.series.windows[0];
        if (w) { state.width = w.width; state.level = w.level; state.preset = w.name; }
        const plan = info.doses.find(function (d) { return d.standard; }) || info.doses[0];
        state.doseA = plan ? plan.id : "";
        const other = info.doses.find(function (d) { return d.id !== state.doseA && d.kind === "plan"; }) || info.doses.find(function (d) { return d.id !== state.doseA; });
        state.doseB = other ? other.id : "";
        const a = plan || null;
        state.isoRef = info.prescription_gy || (a ? +Number(a.max_gy).toFixed(2) : 1);
        const target = info.structures.find(function (s) { return s.name === info.prescription_target && s.box; })
          || info.structures.find(function (s) { return s.kind === "target" && s.box; });
        for (const p of info.planes) state.idx[p.plane] = Math.floor(p.count / 2);
        if (target) {
          const b = target.box;
          const centre = { k: Math.floor((b[0] + b[1] - 1) / 2), j: Math.floor((b[2] + b[3] - 1) / 2), i: Math.floor((b[4] + b[5] - 1) / 2) };
          for (const p of info.planes) state.idx[p.plane] = centre[p.axis];
        }
      }
      for (const p of info.planes) state.idx[p.plane] = Math.max(0, Math.min(p.count - 1, state.idx[p.plane]));
      buildTools();
      buildStructures();
      updateLegend();
      buildPanes();
      refetchAll();
    }

    async function reload(note) {
      cache.clear();
      try { await load(true); say(note || ""); } catch (e) { say("Viewer: " + (e.message || e), true); }
    }

    window.addEventListener("resize", resize);
    say("Loading the viewer…");
    load(false).then(function () { if (!stopped) say(""); }).catch(function (e) { say("The viewer could not be opened: " + (e.message || e), true); });

    return {
      stop: function () {
        stopped = true;
        window.removeEventListener("resize", resize);
        for (const p of PLANES) if (panes[p] && panes[p].detach) panes[p].detach();
        cache.clear();
      },
      state: state,
    };
  }

  window.RayrtViewer = { open: open };
})();
