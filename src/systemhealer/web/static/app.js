/* SystemHealer web: what every page shares — API calls, language, uploads, tables, dialogs,
 * and the renderers of validation reports, training reports and diagnosis results. */
(function () {
  "use strict";
  const API = "/ui/api";
  const SH = (window.SH = {});
  const langHooks = [];
  SH.config = null;

  // ---------- language ----------
  SH.lang = localStorage.getItem("sh.lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
  SH.t = function (key, vars) {
    const table = I18N[SH.lang] || I18N.en;
    let text = key in table ? table[key] : key in I18N.en ? I18N.en[key] : key;
    for (const [k, v] of Object.entries(vars || {})) text = text.split(`{${k}}`).join(String(v));
    return text;
  };
  SH.applyI18n = function (root) {
    (root || document).querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = SH.t(n.dataset.i18n); });
    (root || document).querySelectorAll("[data-i18n-placeholder]").forEach((n) => { n.placeholder = SH.t(n.dataset.i18nPlaceholder); });
    (root || document).querySelectorAll("[data-i18n-title]").forEach((n) => { n.title = SH.t(n.dataset.i18nTitle); });
    document.documentElement.lang = SH.lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll(".lang button").forEach((b) => b.classList.toggle("active", b.dataset.lang === SH.lang));
  };
  SH.onLang = (fn) => langHooks.push(fn);
  SH.setLang = function (lang) {
    SH.lang = lang;
    localStorage.setItem("sh.lang", lang);
    SH.applyI18n();
    langHooks.forEach((fn) => { try { fn(); } catch (e) { console.warn(e); } });
  };

  // ---------- formatting ----------
  SH.cls = (c) => (SH.config && SH.config.class_names[c] !== undefined ? SH.config.class_names[c] : `Class ${c}`);
  SH.classNames = () => SH.config.fault_classes.map(SH.cls);
  SH.num = (v, digits) => (v === null || v === undefined || Number.isNaN(Number(v)) ? "—" : Number(v).toFixed(digits === undefined ? 4 : digits));
  SH.pct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);
  SH.int = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString(SH.lang === "zh" ? "zh-CN" : "en"));
  SH.when = (iso) => (iso ? new Date(iso).toLocaleString(SH.lang === "zh" ? "zh-CN" : "en", { dateStyle: "short", timeStyle: "short" }) : "—");
  SH.day = (ms) => new Date(ms).toLocaleDateString(SH.lang === "zh" ? "zh-CN" : "en", { dateStyle: "medium" });
  SH.bytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} KB`);
  SH.esc = (s) => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  /** Build DOM: h("div.panel", {attrs}, child, "text", …) */
  SH.h = function (spec, attrs, ...children) {
    const [tag, ...classes] = spec.split(".");
    const node = document.createElement(tag || "div");
    if (classes.length) node.className = classes.join(" ");
    if (attrs !== null && attrs !== undefined && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) { children.unshift(attrs); attrs = null; }
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else if (k === "html") node.innerHTML = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  };
  const h = SH.h;

  // ---------- API ----------
  SH.token = () => sessionStorage.getItem("sh.token") || "";
  class ApiError extends Error {
    constructor(message, status, payload) { super(message); this.status = status; this.payload = payload || {}; }
  }
  SH.ApiError = ApiError;
  SH.api = async function (method, path, body) {
    const headers = {};
    const token = SH.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    let payload = body;
    if (body && !(body instanceof FormData)) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
    let response;
    try {
      response = await fetch(API + path, { method, headers, body: payload });
    } catch (e) {
      throw new ApiError(SH.t("error.network"), 0);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text.slice(0, 300) }; }
    if (!response.ok) {
      if (response.status === 401) {
        const box = document.getElementById("token-input");
        if (box) { box.classList.add("needed"); box.focus(); }
      }
      let message = (data && data.error) || `HTTP ${response.status}`;
      if (response.status === 413 && data && data.limit_bytes) message = SH.t("error.too_large_server", { limit: SH.bytes(data.limit_bytes) }) + "\n" + message;
      throw new ApiError(message, response.status, data);
    }
    return data;
  };

  // ---------- feedback ----------
  SH.toast = function (message, kind) {
    const node = h("div.toast" + (kind ? "." + kind : ""), message);
    document.getElementById("toasts").appendChild(node);
    setTimeout(() => node.remove(), kind === "error" ? 8000 : 4000);
  };
  SH.alert = function (container, kind, message) {
    container.textContent = "";
    if (message) container.appendChild(h(`div.alert.${kind}`, { role: kind === "error" ? "alert" : "status" }, message));
  };
  SH.confirm = function (title, message, okLabel) {
    const dialog = document.getElementById("confirm");
    dialog.querySelector("h2").textContent = title;
    dialog.querySelector("p").textContent = message;
    dialog.querySelector("[data-ok]").textContent = okLabel || SH.t("common.confirm");
    dialog.querySelector("[data-cancel]").textContent = SH.t("common.cancel");
    return new Promise((resolve) => {
      const done = (value) => { dialog.close(); resolve(value); };
      dialog.querySelector("[data-ok]").onclick = () => done(true);
      dialog.querySelector("[data-cancel]").onclick = () => done(false);
      dialog.oncancel = () => resolve(false);
      dialog.showModal();
    });
  };
  SH.badge = (status, label) => h(`span.badge.${status}`, label || SH.t(`status.${status}`));
  SH.poll = function (fn, ms) {
    let stopped = false, timer = null;
    const tick = async () => {
      if (stopped) return;
      let again = true;
      try { again = await fn(); } catch (e) { console.warn(e); }
      if (again && !stopped) timer = setTimeout(tick, ms || 1000);
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  };
  SH.param = (name) => new URLSearchParams(location.search).get(name);
  SH.setParam = function (name, value) {
    const url = new URL(location.href);
    if (value) url.searchParams.set(name, value); else url.searchParams.delete(name);
    history.replaceState(null, "", url);
  };

  // ---------- file picker with drag and drop ----------
  SH.dropzone = function (zone, onFile) {
    const input = zone.querySelector("input[type=file]");
    const name = zone.querySelector(".file-name");
    const take = (file) => {
      if (!file) return;
      const limit = SH.config.max_upload_bytes;
      if (file.size > limit) {
        onFile(null, SH.t("error.too_large", { size: SH.bytes(file.size), limit: SH.bytes(limit) }));
        return;
      }
      if (!/\.(csv|csv\.gz|gz|parquet|pq)$/i.test(file.name)) {
        onFile(null, SH.t("error.file_type", { name: file.name }));
        return;
      }
      if (name) name.textContent = `${file.name} (${SH.bytes(file.size)})`;
      onFile(file, null);
    };
    zone.addEventListener("click", (e) => { if (e.target !== input) input.click(); });
    zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    input.addEventListener("change", () => { take(input.files[0]); input.value = ""; });
    ["dragenter", "dragover"].forEach((ev) => zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((ev) => zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); }));
    zone.addEventListener("drop", (e) => take(e.dataTransfer.files[0]));
  };

  /** Run ``action`` on a click, or on Enter or Space while ``node`` has the focus. */
  SH.onActivate = function (node, action) {
    node.addEventListener("click", action);
    node.addEventListener("keydown", (e) => {
      if (e.target === node && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); action(); }
    });
  };

  // ---------- sortable, paginated table ----------
  /** columns: [{key, label, num, sortable, render(row) -> Node|string}]; source({offset, limit,
   *  sort, descending}) -> Promise<{total, rows}>. Returns {reload()}. */
  SH.table = function (container, columns, source, options) {
    const state = { offset: 0, limit: (options && options.pageSize) || 25, sort: null, descending: false };
    const draw = async () => {
      let page;
      try {
        page = await source(state);
      } catch (e) {
        SH.alert(container, "error", e.message);
        return;
      }
      const head = h("tr", columns.map((c) => {
        const th = h("th" + (c.num ? ".num" : "") + (c.sortable !== false ? ".sortable" : ""), { "data-key": c.key }, typeof c.label === "function" ? c.label() : SH.t(c.label));
        if (state.sort === c.key) th.appendChild(h("span.arrow", state.descending ? "▼" : "▲"));
        if (c.sortable !== false) {
          th.tabIndex = 0;  // sortable from the keyboard too
          th.setAttribute("aria-sort", state.sort !== c.key ? "none" : state.descending ? "descending" : "ascending");
          SH.onActivate(th, () => {
            if (state.sort === c.key) state.descending = !state.descending; else { state.sort = c.key; state.descending = !!c.num; }
            state.offset = 0; draw();
          });
        }
        return th;
      }));
      const body = h("tbody", page.rows.map((row) => {
        const tr = h("tr", columns.map((c) => {
          const value = c.render ? c.render(row) : row[c.key];
          return h("td" + (c.num ? ".num" : ""), value instanceof Node ? value : String(value === null || value === undefined ? "—" : value));
        }));
        if (options && options.onRow) { tr.classList.add("clickable"); tr.tabIndex = 0; SH.onActivate(tr, () => options.onRow(row, tr)); }
        return tr;
      }));
      const last = Math.min(page.total, state.offset + state.limit);
      const pager = h("div.pager",
        h("span.muted", SH.t("table.showing", { from: page.total ? state.offset + 1 : 0, to: last, total: SH.int(page.total) })),
        h("select", { "aria-label": SH.t("table.page_size"), onchange: (e) => { state.limit = +e.target.value; state.offset = 0; draw(); } },
          [10, 25, 50, 100].map((n) => h("option", { value: n, selected: n === state.limit }, SH.t("table.per_page", { n })))),
        h("button", { disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); draw(); }, "aria-label": SH.t("table.previous") }, "‹"),
        h("button", { disabled: last >= page.total, onclick: () => { state.offset += state.limit; draw(); }, "aria-label": SH.t("table.next") }, "›"));
      // Redrawn (sorted, paged, refreshed): the header or row that had the focus keeps it.
      const focused = container.contains(document.activeElement) ? document.activeElement : null;
      const focusedKey = focused && focused.tagName === "TH" ? focused.dataset.key : null;
      const focusedRow = focused && focused.tagName === "TR" ? Array.from(focused.parentNode.children).indexOf(focused) : -1;
      container.textContent = "";
      container.appendChild(h("div.table-wrap", h("table.data", h("thead", head), body)));
      if (focusedKey) { const th = head.querySelector(`th[data-key="${CSS.escape(focusedKey)}"]`); if (th) th.focus(); }
      else if (focusedRow >= 0 && body.children[focusedRow]) body.children[focusedRow].focus();
      if (!page.total) container.appendChild(h("div.empty-state", SH.t((options && options.empty) || "table.empty")));
      if (page.total > Math.min(...[10, state.limit])) container.appendChild(pager);
    };
    draw();
    return { reload: draw, state };
  };
  /** A table source over rows held in the page. */
  SH.localSource = (rows) => async (state) => {
    let sorted = rows;
    if (state.sort) {
      const k = state.sort, dir = state.descending ? -1 : 1;
      sorted = [...rows].sort((a, b) => (a[k] < b[k] ? -dir : a[k] > b[k] ? dir : 0));
    }
    return { total: rows.length, rows: sorted.slice(state.offset, state.offset + state.limit) };
  };

  // ---------- shared renderers ----------
  /** Per-epoch history → line series, one per ensemble member (records carry ``member``). */
  SH.historySeries = function (history, key, name, color) {
    const members = [...new Set(history.map((e) => e.member || 0))];
    return members.map((m) => {
      const part = history.filter((e) => (e.member || 0) === m);
      return { name, color, x: part.map((e) => e.epoch), y: part.map((e) => e[key]) };
    });
  };
  SH.lossSeries = (history) => [
    ...SH.historySeries(history, "train_loss", SH.t("chart.train_loss"), Charts.PALETTE[0]),
    ...SH.historySeries(history, "val_loss", SH.t("chart.val_loss"), Charts.PALETTE[1]),
  ];

  SH.chartBox = (titleKey, id) => h("div.panel", h("h3", SH.t(titleKey)), h("div.chart", { id }));

  /** A validation report: verdict, figures, blocking errors, drift warnings. */
  SH.renderValidation = function (container, report) {
    container.textContent = "";
    if (!report) return;
    const verdict = report.ok
      ? h("div.alert.ok", SH.t("validation.ok", { rows: SH.int(report.rows), columns: report.columns, checks: report.checks_run }))
      : h("div.alert.error", { role: "alert" }, SH.t("validation.bad", { errors: report.issues.filter((i) => i.blocking).length }));
    container.appendChild(verdict);
    const errors = report.issues.filter((i) => i.blocking), warnings = report.issues.filter((i) => !i.blocking);
    if (errors.length) {
      container.appendChild(h("h3", SH.t("validation.errors")));
      container.appendChild(h("ul.issues.errors", errors.map((i) => h("li", h("code", i.check), " ", i.message))));
    }
    if (warnings.length) {
      const list = h("ul.issues.warnings", warnings.map((i) => h("li", h("code", i.check), " ", i.message)));
      container.appendChild(h("details", { open: warnings.length <= 5 }, h("summary", SH.t("validation.warnings", { n: warnings.length })), list));
    }
  };

  function figure(label, value, title) {
    return h("div.figure", { title }, h("div.value", value), h("div.label", label));
  }
  SH.figure = figure;

  /** The report of a training run: gate, metrics beside the champion's, charts, per-class table. */
  SH.renderRunReport = function (container, report, extra) {
    container.textContent = "";
    if (!report) { container.appendChild(h("div.alert.warn", SH.t("report.missing"))); return; }
    const run = report.run || {}, metrics = run.metrics || {}, gate = report.gate || {};
    const names = SH.classNames();
    const version = report.model_version;
    const members = new Set((report.history || []).map((e) => e.member || 0)).size;
    const gateBox = h("div.alert." + (gate.promoted ? "ok" : "warn"),
      gate.promoted ? SH.t("report.promoted", { version }) : SH.t("report.rejected", { version }),
      gate.reason ? h("div.small", SH.t("report.reason"), " ", h("code", gate.reason)) : null);
    container.appendChild(gateBox);

    // Metrics beside the champion's (on the same held-out rows, as the gate compared them).
    const champ = report.champion;
    const gateChampion = gate.champion || {};
    const candidate = gate.candidate || {};
    const rows = [
      ["eval_macro_f1", metrics.eval_macro_f1, gateChampion.eval_macro_f1 ?? gate.champion_macro_f1, champ && champ.metrics.eval_macro_f1],
      ["shift_macro_f1", metrics.shift_macro_f1 ?? candidate.shift_macro_f1, gateChampion.shift_macro_f1, champ && champ.metrics.shift_macro_f1],
      ["shift_score", metrics.shift_score ?? candidate.shift_score, gateChampion.shift_score, champ && champ.metrics.shift_score],
      ["eval_accuracy", metrics.eval_accuracy, null, champ && champ.metrics.eval_accuracy],
    ].filter((r) => r[1] !== undefined && r[1] !== null);
    const compare = h("table.data.compare",
      h("thead", h("tr", h("th", SH.t("report.metric")), h("th.num", SH.t("report.this_model", { version })),
        h("th.num", champ ? SH.t("report.champion_same_rows", { version: champ.version }) : SH.t("report.no_champion")),
        h("th.num", champ ? SH.t("report.champion_own", { version: champ.version }) : ""))),
      h("tbody", rows.map((r) => h("tr", h("td", SH.t(`metric.${r[0]}`)), h("td.num", h("strong", SH.num(r[1]))), h("td.num", SH.num(r[2])), h("td.num", champ ? SH.num(r[3]) : "")))));
    const facts = h("div.figures",
      figure(SH.t("metric.eval_macro_f1"), SH.num(metrics.eval_macro_f1)),
      figure(SH.t("metric.eval_accuracy"), SH.num(metrics.eval_accuracy)),
      figure(SH.t("report.epochs"), (report.history || []).length || "—"),
      members > 1 ? figure(SH.t("report.members"), members) : null,
      figure(SH.t("report.best_epoch"), metrics.best_epoch !== undefined ? metrics.best_epoch : "—"),
      figure(SH.t("report.train_seconds"), metrics.train_seconds !== undefined ? SH.num(metrics.train_seconds, 1) : "—"));
    const links = h("div.row.links",
      version ? h("a.button.primary", { href: `${API}/models/${version}/archive`, download: "", "data-testid": "download-model" }, "⤓ ", SH.t("report.download_model", { version })) : null,
      extra && extra.reportUrl ? h("a.button", { href: extra.reportUrl, download: "", "data-testid": "download-report" }, "⤓ ", SH.t("report.download_report")) : null,
      report.mlflow_run_url ? h("a", { href: report.mlflow_run_url, target: "_blank", rel: "noopener" }, SH.t("report.open_mlflow"), " ↗") : null);
    container.appendChild(h("div.panel", h("h2", SH.t("report.metrics")), facts, h("div", { style: "height:12px" }), h("div.table-wrap", compare), h("div", { style: "height:12px" }), links));

    const grid = h("div.grid.two");
    container.appendChild(grid);
    const classMix = (report.fingerprint && report.fingerprint.class_counts) || {};
    const mixBox = SH.chartBox("report.class_mix", "chart-class-mix");
    const lossBox = SH.chartBox("report.loss_curves", "chart-loss");
    const f1Box = SH.chartBox("report.f1_curve", "chart-f1");
    const confBox = SH.chartBox("report.confusion", "chart-confusion");
    const embBox = SH.chartBox("report.embedding", "chart-embedding");
    grid.append(lossBox, f1Box, confBox, embBox, mixBox);
    const history = report.history || [];
    Charts.bar(mixBox.querySelector(".chart"), { labels: SH.config.fault_classes.map((c) => names[c]), values: SH.config.fault_classes.map((c) => classMix[String(c)] || 0), xTitle: SH.t("chart.fault_class"), yTitle: SH.t("chart.incidents") });
    Charts.lines(lossBox.querySelector(".chart"), { series: SH.lossSeries(history), xTitle: SH.t("chart.epoch"), yTitle: SH.t("chart.loss") });
    Charts.lines(f1Box.querySelector(".chart"), {
      series: SH.historySeries(history, "val_macro_f1", SH.t("chart.val_f1"), Charts.PALETTE[2]),
      xTitle: SH.t("chart.epoch"), yTitle: SH.t("metric.macro_f1"), yMin: 0, yMax: 1,
    });
    const evaluation = report.evaluation || {};
    if (evaluation.confusion) {
      Charts.heatmap(confBox.querySelector(".chart"), { matrix: evaluation.confusion, rowLabels: names, colLabels: names, xTitle: SH.t("chart.predicted"), yTitle: SH.t("chart.true") });
    }
    const emb = report.embedding || {};
    Charts.scatter(embBox.querySelector(".chart"), { x: emb.x || [], y: emb.y || [], groups: emb.label || [], groupNames: names, xTitle: SH.t("chart.embedding_axes") });

    const perClass = evaluation.per_class || {};
    const table = h("table.data.per-class",
      h("thead", h("tr", ["report.class", "metric.precision", "metric.recall", "metric.f1", "metric.support"].map((k, i) => h(i ? "th.num" : "th", SH.t(k))))),
      h("tbody", SH.config.fault_classes.map((c) => {
        const s = perClass[String(c)] || {};
        return h("tr", h("td", h("span.swatch", { style: `background:${Charts.PALETTE[c % Charts.PALETTE.length]}` }), names[c]),
          h("td.num", SH.num(s.precision, 3)), h("td.num", SH.num(s.recall, 3)), h("td.num", SH.num(s.f1, 3)), h("td.num", s.support ?? "—"));
      })));
    mixBox.after(h("div.panel", h("h3", SH.t("report.per_class")), h("div.table-wrap", table)));
  };

  /** Probabilities as a small stacked bar (title gives the numbers). */
  SH.probBar = function (probs) {
    const bar = h("span.probs", { title: probs.map((p, i) => `${SH.cls(i)}: ${(100 * p).toFixed(1)}%`).join("\n") });
    probs.forEach((p, i) => bar.appendChild(h("span", { style: `width:${(100 * p).toFixed(2)}%;background:${Charts.PALETTE[i % Charts.PALETTE.length]}` })));
    return bar;
  };

  /** Diagnosis results: figures, class distribution, confidence histogram, embedding, table. */
  SH.renderDiagnoses = function (container, summary, source, downloads) {
    container.textContent = "";
    const names = SH.classNames();
    const counts = summary.class_counts || {};
    const top = SH.config.fault_classes.reduce((a, c) => ((counts[String(c)] || 0) > (counts[String(a)] || 0) ? c : a), 0);
    container.appendChild(h("div.panel",
      h("div.row", h("h2", SH.t("diagnose.results")), h("span.spacer"),
        downloads ? h("a.button.primary", { href: downloads.csv, download: "", "data-testid": "download-csv" }, "⤓ CSV") : null,
        downloads ? h("a.button", { href: downloads.json, download: "", "data-testid": "download-json" }, "⤓ JSON") : null),
      h("div.figures",
        figure(SH.t("diagnose.incidents"), SH.int(summary.rows)),
        figure(SH.t("diagnose.model_version"), `v${summary.model_version}`),
        figure(SH.t("diagnose.deployment"), summary.deployment === "training" ? SH.t("diagnose.training_stats") : summary.deployment),
        figure(SH.t("diagnose.mean_confidence"), SH.pct(summary.mean_confidence)),
        figure(SH.t("diagnose.low_confidence"), SH.int(summary.low_confidence), SH.t("diagnose.low_confidence_hint")),
        figure(SH.t("diagnose.most_common"), summary.rows ? names[top] : "—"))));
    if (summary.unread) {
      // Incidents with none of the model's KPIs: a diagnosis, but resting on no evidence.
      container.appendChild(h("div.alert.warn", { "data-testid": "unread-warning" },
        SH.t("diagnose.unread", { n: SH.int(summary.unread), rows: SH.int(summary.rows), kpis: summary.model_kpis })));
    }
    const scored = summary.label_scores;
    if (scored && scored.unusable) {
      container.appendChild(h("div.alert.warn", { "data-testid": "label-scores" }, SH.t("diagnose.labels_unusable", { bad: SH.int(scored.unusable.bad), rows: SH.int(scored.unusable.rows) })));
    } else if (scored && scored.report) {
      // The file carried a label column: how the diagnoses compare with it.
      const r = scored.report;
      const confBox = SH.chartBox("diagnose.label_confusion", "chart-label-confusion");
      container.appendChild(h("div.grid.two", { "data-testid": "label-scores" },
        h("div.panel", h("h3", SH.t("diagnose.label_scores")), h("p.muted.small", SH.t("diagnose.label_scores_hint")),
          h("div.figures",
            figure(SH.t("metric.macro_f1"), SH.num(r.macro_f1)),
            figure(SH.t("metric.balanced_macro_f1"), SH.num(r.balanced_macro_f1)),
            figure(SH.t("metric.eval_accuracy"), SH.num(r.accuracy)))),
        confBox));
      Charts.heatmap(confBox.querySelector(".chart"), { matrix: r.confusion, rowLabels: names, colLabels: names, xTitle: SH.t("chart.predicted"), yTitle: SH.t("chart.true") });
    }
    if (summary.rows === 1 && summary.diagnoses) {
      // One incident: how likely each fault class is says more than distributions of one.
      const only = summary.diagnoses[0];
      const box = SH.chartBox("diagnose.class_probabilities", "chart-probabilities");
      container.appendChild(h("div.grid.two", box, h("div.panel", h("h3", SH.t("diagnose.verdict")),
        h("p", { style: "font-size:18px" }, h("span.swatch", { style: `background:${Charts.PALETTE[only.predicted_label % Charts.PALETTE.length]}` }),
          h("strong", names[only.predicted_label]), " ", h("span.muted", SH.pct(only.confidence))),
        only.kpis_read === undefined ? null
          : h("p.small", { "data-testid": "kpis-read" }, SH.t("diagnose.kpis_read", { read: only.kpis_read, kpis: summary.model_kpis })),
        h("p.muted.small", SH.t("diagnose.verdict_hint")))));
      Charts.bar(box.querySelector(".chart"), {
        labels: SH.config.fault_classes.map((c) => names[c]), values: SH.config.fault_classes.map((c) => only[`proba_${c}`]),
        format: (v) => `${(100 * v).toFixed(1)}%`, xTitle: SH.t("chart.fault_class"), yTitle: SH.t("chart.probability"),
      });
    }
    const grid = h("div.grid.two", summary.rows === 1 && summary.diagnoses ? { hidden: true } : null);
    const dist = SH.chartBox("diagnose.class_distribution", "chart-distribution");
    const hist = SH.chartBox("diagnose.confidence_histogram", "chart-confidence");
    const emb = SH.chartBox("diagnose.embedding", "chart-diag-embedding");
    const low = h("div.panel", h("h3", SH.t("diagnose.by_class")), h("div", { id: "class-confidence" }));
    grid.append(dist, hist, emb, low);
    container.appendChild(grid);
    // Per predicted class: how many, and how sure (from the chart data of the whole file).
    const byClass = summary.class_confidence || {};
    low.querySelector("#class-confidence").appendChild(h("table.data",
      h("thead", h("tr", h("th", SH.t("report.class")), h("th.num", SH.t("chart.incidents")), h("th.num", SH.t("diagnose.share")), h("th.num", SH.t("diagnose.mean_confidence")))),
      h("tbody", SH.config.fault_classes.map((c) => h("tr",
        h("td", h("span.swatch", { style: `background:${Charts.PALETTE[c % Charts.PALETTE.length]}` }), names[c]),
        h("td.num", SH.int(counts[String(c)] || 0)),
        h("td.num", summary.rows ? SH.pct((counts[String(c)] || 0) / summary.rows) : "—"),
        h("td.num", byClass[String(c)] === undefined || byClass[String(c)] === null ? "—" : SH.pct(byClass[String(c)])))))));
    Charts.bar(dist.querySelector(".chart"), { labels: SH.config.fault_classes.map((c) => names[c]), values: SH.config.fault_classes.map((c) => counts[String(c)] || 0), xTitle: SH.t("chart.fault_class"), yTitle: SH.t("chart.incidents") });
    const ch = summary.confidence_histogram;
    Charts.histogram(hist.querySelector(".chart"), { edges: ch.edges, counts: ch.counts, xTitle: SH.t("chart.confidence"), yTitle: SH.t("chart.incidents") });
    const e = summary.embedding || {};
    Charts.scatter(emb.querySelector(".chart"), { x: e.x || [], y: e.y || [], groups: e.label || [], groupNames: names, titles: (e.sample_id || []).map((s, i) => `${s}: ${names[e.label[i]]}`), xTitle: SH.t("chart.embedding_axes") });
    const tablePanel = h("div.panel", h("h3", SH.t("diagnose.table")), h("div", { id: "diagnosis-table" }));
    container.appendChild(tablePanel);
    const columns = [
      { key: "sample_id", label: "col.sample_id" },
      { key: "predicted_label", label: "col.predicted", render: (r) => h("span", h("span.swatch", { style: `background:${Charts.PALETTE[r.predicted_label % Charts.PALETTE.length]}` }), names[r.predicted_label]) },
      { key: "confidence", label: "col.confidence", num: true, render: (r) => SH.num(r.confidence, 4) },
      { key: "probabilities", label: "col.probabilities", sortable: false, render: (r) => SH.probBar(SH.config.fault_classes.map((c) => r[`proba_${c}`])) },
      ...SH.config.fault_classes.map((c) => ({ key: `proba_${c}`, label: () => `P(${names[c]})`, num: true, render: (r) => SH.num(r[`proba_${c}`], 4) })),
    ];
    return SH.table(tablePanel.querySelector("#diagnosis-table"), columns, source);
  };

  // ---------- page start ----------
  async function start() {
    document.querySelectorAll(".lang button").forEach((b) => b.addEventListener("click", () => SH.setLang(b.dataset.lang)));
    const page = document.body.dataset.page;
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
    try {
      SH.config = await SH.api("GET", "/config");
    } catch (e) {
      document.getElementById("main").prepend(h("div.alert.error", e.message));
      return;
    }
    const tokenBox = document.getElementById("token-box");
    if (SH.config.token_required) {
      tokenBox.hidden = false;
      tokenBox.addEventListener("submit", (e) => e.preventDefault());
      const input = document.getElementById("token-input");
      input.value = SH.token();
      input.addEventListener("change", () => { sessionStorage.setItem("sh.token", input.value.trim()); input.classList.remove("needed"); });
    }
    SH.applyI18n();
    if (window.Page && window.Page.start) window.Page.start();
    document.body.dataset.ready = "true";  // handlers are in place (tests wait for this)
  }
  document.addEventListener("DOMContentLoaded", start);
})();
