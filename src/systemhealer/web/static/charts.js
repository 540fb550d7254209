/* SystemHealer charts: small hand-written SVG charts (bar, lines, histogram, heatmap, scatter).
 * No third-party code, nothing fetched: every chart is drawn from the data it is given.
 * Each function takes a container element and an options object, and replaces the container's
 * content with one <svg> sized by its viewBox (it scales with the container's width). */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  // Okabe–Ito palette: tells the six fault classes apart, also for colour-blind readers.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999999", "#F0E442"];

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function tip(node, text) {
    el("title", {}, node, text);
    return node;
  }

  function svg(container, width, height, label) {
    container.textContent = "";
    const root = el("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label || "chart",
      class: "chart-svg", preserveAspectRatio: "xMidYMid meet",
    }, container);
    return root;
  }

  function niceStep(span, ticks) {
    const raw = span / Math.max(1, ticks);
    const power = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const scaled = raw / power;
    const nice = scaled < 1.5 ? 1 : scaled < 3 ? 2 : scaled < 7 ? 5 : 10;
    return nice * power;
  }

  function ticksFor(min, max, count) {
    if (!(max > min)) { max = min + 1; }
    const step = niceStep(max - min, count);
    const start = Math.floor(min / step + 1e-9) * step;
    const end = Math.ceil(max / step - 1e-9) * step;
    const out = [];
    for (let v = start; v <= end + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function fmtTick(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(0);
    if (Number.isInteger(v)) return String(v);
    return String(+v.toFixed(3));
  }

  function frame(root, box, opts) {
    // Axis titles.
    if (opts.xTitle) el("text", { x: box.x + box.w / 2, y: box.y + box.h + 38, class: "axis-title", "text-anchor": "middle" }, root, opts.xTitle);
    if (opts.yTitle) el("text", { x: 14, y: box.y + box.h / 2, class: "axis-title", "text-anchor": "middle", transform: `rotate(-90 14 ${box.y + box.h / 2})` }, root, opts.yTitle);
  }

  function yAxis(root, box, min, max, count) {
    const ticks = ticksFor(min, max, count || 5);
    const lo = ticks[0], hi = ticks[ticks.length - 1];
    const scale = (v) => box.y + box.h - ((v - lo) / (hi - lo || 1)) * box.h;
    for (const t of ticks) {
      const y = scale(t);
      el("line", { x1: box.x, x2: box.x + box.w, y1: y, y2: y, class: "grid" }, root);
      el("text", { x: box.x - 6, y: y + 4, class: "tick", "text-anchor": "end" }, root, fmtTick(t));
    }
    el("line", { x1: box.x, x2: box.x, y1: box.y, y2: box.y + box.h, class: "axis" }, root);
    return { scale, lo, hi };
  }

  /** Vertical bars: labels[i] with values[i]; colors per bar (default: the class palette). */
  function bar(container, opts) {
    const W = 520, H = 300;
    const box = { x: 56, y: 16, w: W - 72, h: H - 76 };
    const root = svg(container, W, H, opts.title);
    const values = opts.values.map((v) => Number(v) || 0);
    const y = yAxis(root, box, 0, Math.max(1, ...values), 5);
    const n = values.length;
    const slot = box.w / Math.max(1, n);
    const width = Math.max(2, slot * (opts.gap === 0 ? 0.98 : 0.7));
    values.forEach((v, i) => {
      const x = box.x + slot * i + (slot - width) / 2;
      const top = y.scale(v);
      const color = (opts.colors && opts.colors[i]) || opts.color || PALETTE[i % PALETTE.length];
      const rect = el("rect", { x, y: top, width, height: Math.max(0, box.y + box.h - top), fill: color, class: "bar" }, root);
      tip(rect, `${opts.labels[i]}: ${opts.format ? opts.format(v, i) : v}`);
      if (opts.showValues !== false && n <= 12) {
        el("text", { x: x + width / 2, y: top - 4, class: "bar-value", "text-anchor": "middle" }, root, opts.format ? opts.format(v, i) : String(v));
      }
      const every = Math.ceil(n / 12);
      if (i % every === 0) {
        const label = String(opts.labels[i]);
        el("text", { x: x + width / 2, y: box.y + box.h + 16, class: "tick", "text-anchor": "middle" }, root, label.length > 14 ? label.slice(0, 13) + "…" : label);
      }
    });
    el("line", { x1: box.x, x2: box.x + box.w, y1: box.y + box.h, y2: box.y + box.h, class: "axis" }, root);
    frame(root, box, opts);
    return root;
  }

  /** Histogram from bin edges and counts. */
  function histogram(container, opts) {
    const labels = opts.counts.map((_, i) => `${opts.edges[i].toFixed(2)}–${opts.edges[i + 1].toFixed(2)}`);
    const short = opts.counts.map((_, i) => opts.edges[i].toFixed(2));
    const root = bar(container, { ...opts, labels: short, values: opts.counts, color: opts.color || PALETTE[0], gap: 0, showValues: false });
    // Replace the tooltips with the bin ranges.
    root.querySelectorAll("rect.bar").forEach((rect, i) => {
      rect.querySelector("title").textContent = `${labels[i]}: ${opts.counts[i]}`;
    });
    return root;
  }

  /** Lines: series = [{name, x: [], y: [], color}], with a legend. */
  function lines(container, opts) {
    const W = 520, H = 300;
    const box = { x: 56, y: 16, w: W - 72, h: H - 96 };
    const root = svg(container, W, H, opts.title);
    const xs = opts.series.flatMap((s) => s.x), ys = opts.series.flatMap((s) => s.y).filter(Number.isFinite);
    if (!xs.length || !ys.length) {
      el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, root, opts.empty || "—");
      return root;
    }
    const xMin = opts.xMin !== undefined ? opts.xMin : Math.min(...xs);
    const xMax = opts.xMax !== undefined ? Math.max(opts.xMax, ...xs) : Math.max(...xs);
    const yMin = opts.yMin !== undefined ? opts.yMin : Math.min(...ys);
    const yMax = opts.yMax !== undefined ? opts.yMax : Math.max(...ys);
    const y = yAxis(root, box, yMin, yMax, 5);
    const xScale = (v) => box.x + ((v - xMin) / (xMax - xMin || 1)) * box.w;
    for (const t of ticksFor(xMin, xMax, 6)) {
      if (t < xMin - 1e-9 || t > xMax + 1e-9) continue;
      el("text", { x: xScale(t), y: box.y + box.h + 16, class: "tick", "text-anchor": "middle" }, root, fmtTick(t));
    }
    el("line", { x1: box.x, x2: box.x + box.w, y1: box.y + box.h, y2: box.y + box.h, class: "axis" }, root);
    opts.series.forEach((s, k) => {
      const color = s.color || PALETTE[k % PALETTE.length];
      const pts = s.x.map((xv, i) => [xScale(xv), y.scale(s.y[i])]).filter((p) => Number.isFinite(p[1]));
      el("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": 2, class: "line" }, root);
      if (pts.length <= 60) {
        pts.forEach((p, i) => tip(el("circle", { cx: p[0], cy: p[1], r: 3, fill: color, class: "dot" }, root), `${s.name} @ ${s.x[i]}: ${fmtTick(s.y[i])}`));
      }
    });
    // One legend entry per name: an ensemble draws one line per member under the same name.
    const named = new Map();
    opts.series.forEach((s, k) => { if (!named.has(s.name)) named.set(s.name, s.color || PALETTE[k % PALETTE.length]); });
    legend(root, [...named].map(([name, color]) => ({ name, color })), box.x, H - 24);
    frame(root, { ...box }, { ...opts, xTitle: null });
    if (opts.xTitle) el("text", { x: box.x + box.w - 2, y: box.y + box.h + 32, class: "axis-title", "text-anchor": "end" }, root, opts.xTitle);
    return root;
  }

  function legend(root, items, x0, y0) {
    let x = x0;
    for (const item of items) {
      el("rect", { x, y: y0 - 9, width: 12, height: 12, fill: item.color, rx: 2 }, root);
      el("text", { x: x + 16, y: y0 + 1, class: "legend" }, root, item.name);
      // Width of the text: CJK characters are about twice as wide as Latin ones.
      const width = [...item.name].reduce((w, ch) => w + (ch.codePointAt(0) > 0x2e80 ? 12.5 : 7), 0);
      x += 24 + Math.max(30, width);
    }
  }

  /** Heatmap (confusion matrix): rows = true class, columns = predicted class. */
  function heatmap(container, opts) {
    const n = opts.matrix.length, m = n ? opts.matrix[0].length : 0;
    const W = 520, H = 380;
    const box = { x: 110, y: 16, w: W - 130, h: H - 110 };
    const root = svg(container, W, H, opts.title);
    const max = Math.max(1, ...opts.matrix.flat());
    const cw = box.w / Math.max(1, m), ch = box.h / Math.max(1, n);
    for (let i = 0; i < n; i++) {
      const rowTotal = opts.matrix[i].reduce((a, b) => a + b, 0) || 1;
      for (let j = 0; j < m; j++) {
        const v = opts.matrix[i][j];
        const share = v / max;
        const fill = `rgba(0, 114, 178, ${0.06 + 0.94 * share})`;
        const cell = el("rect", { x: box.x + j * cw, y: box.y + i * ch, width: cw - 1, height: ch - 1, fill, class: i === j ? "cell diag" : "cell" }, root);
        tip(cell, `${opts.rowLabels[i]} → ${opts.colLabels[j]}: ${v} (${(100 * v / rowTotal).toFixed(1)}%)`);
        el("text", { x: box.x + j * cw + cw / 2, y: box.y + i * ch + ch / 2 + 4, "text-anchor": "middle", class: share > 0.55 ? "cell-text light" : "cell-text" }, root, String(v));
      }
      el("text", { x: box.x - 6, y: box.y + i * ch + ch / 2 + 4, class: "tick", "text-anchor": "end" }, root, shorten(opts.rowLabels[i]));
    }
    for (let j = 0; j < m; j++) {
      const x = box.x + j * cw + cw / 2, y = box.y + box.h + 12;
      el("text", { x, y, class: "tick", "text-anchor": "end", transform: `rotate(-35 ${x} ${y})` }, root, shorten(opts.colLabels[j]));
    }
    if (opts.xTitle) el("text", { x: box.x + box.w / 2, y: H - 6, class: "axis-title", "text-anchor": "middle" }, root, opts.xTitle);
    if (opts.yTitle) el("text", { x: 12, y: box.y + box.h / 2, class: "axis-title", "text-anchor": "middle", transform: `rotate(-90 12 ${box.y + box.h / 2})` }, root, opts.yTitle);
    return root;
  }

  function shorten(s) {
    s = String(s);
    return s.length > 14 ? s.slice(0, 13) + "…" : s;
  }

  /** Scatter: x, y, groups (class ids) with groupNames; titles per point for tooltips. */
  function scatter(container, opts) {
    const W = 520, H = 340;
    const box = { x: 48, y: 12, w: W - 64, h: H - 76 };
    const root = svg(container, W, H, opts.title);
    const n = opts.x.length;
    if (!n) {
      el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, root, opts.empty || "—");
      return root;
    }
    const xMin = Math.min(...opts.x), xMax = Math.max(...opts.x);
    const yMin = Math.min(...opts.y), yMax = Math.max(...opts.y);
    const y = yAxis(root, box, yMin, yMax, 4);
    const xs = (v) => box.x + 4 + ((v - xMin) / (xMax - xMin || 1)) * (box.w - 8);
    el("line", { x1: box.x, x2: box.x + box.w, y1: box.y + box.h, y2: box.y + box.h, class: "axis" }, root);
    const radius = n > 1000 ? 2 : n > 200 ? 2.6 : 3.4;
    const groups = opts.groups || [];
    const present = [...new Set(groups)].sort((a, b) => a - b);
    for (let i = 0; i < n; i++) {
      const g = groups[i];
      const dot = el("circle", {
        cx: xs(opts.x[i]).toFixed(1), cy: y.scale(opts.y[i]).toFixed(1), r: radius,
        fill: PALETTE[(g | 0) % PALETTE.length], class: "point", "data-group": g,
      }, root);
      if (n <= 1500) tip(dot, (opts.titles && opts.titles[i]) || (opts.groupNames ? opts.groupNames[g] : String(g)));
    }
    legend(root, present.map((g) => ({ name: opts.groupNames ? opts.groupNames[g] : String(g), color: PALETTE[(g | 0) % PALETTE.length] })), box.x, H - 28);
    if (opts.xTitle) el("text", { x: box.x + box.w, y: H - 6, class: "axis-title", "text-anchor": "end" }, root, opts.xTitle);
    return root;
  }

  window.Charts = { bar, histogram, lines, heatmap, scatter, PALETTE };
})();
