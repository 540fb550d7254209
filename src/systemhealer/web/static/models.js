/* Models: registered versions, the champion, promote / roll back, reports, MLflow links. */
(function () {
  "use strict";
  const h = SH.h;
  let data = null;
  let detail = null;   // {version, report}

  function shortSha(sha) { return sha ? sha.slice(0, 10) : "—"; }

  function classMix(fp) {
    const counts = (fp && fp.class_counts) || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    if (!total) return "—";
    const bar = h("span.probs.mix", { title: SH.config.fault_classes.map((c) => `${SH.cls(c)}: ${counts[String(c)] || 0}`).join("\n") });
    SH.config.fault_classes.forEach((c) => bar.appendChild(h("span", { style: `width:${(100 * (counts[String(c)] || 0)) / total}%;background:${Charts.PALETTE[c % Charts.PALETTE.length]}` })));
    return bar;
  }

  async function promote(v) {
    const ok = await SH.confirm(SH.t("models.promote_title", { version: v.version }), SH.t("models.promote_text", { version: v.version }), SH.t("models.promote"));
    if (!ok) return;
    try {
      await SH.api("POST", `/models/${v.version}/promote`);
      SH.toast(SH.t("models.promoted_toast", { version: v.version }));
      await load();
    } catch (e) { SH.alert(document.getElementById("models-status"), "error", e.message); }
  }

  async function rollback() {
    const champion = data && data.versions.find((v) => v.champion);
    if (!champion) { SH.alert(document.getElementById("models-status"), "error", SH.t("models.no_champion")); return; }
    const ok = await SH.confirm(SH.t("models.rollback_title"), SH.t("models.rollback_text", { version: champion.version, to: data.rollback_to }), SH.t("models.rollback"));
    if (!ok) return;
    try {
      const answer = await SH.api("POST", "/models/rollback");
      SH.toast(SH.t("models.rolled_back_toast", { from: answer.from, to: answer.champion }));
      await load();
    } catch (e) { SH.alert(document.getElementById("models-status"), "error", e.message); }
  }

  async function showDetail(version) {
    const section = document.getElementById("version-detail");
    section.hidden = false;
    document.getElementById("detail-title").textContent = SH.t("models.detail_title", { version });
    const body = document.getElementById("detail-body");
    SH.alert(body, "info", SH.t("common.loading"));
    try {
      detail = { version, report: await SH.api("GET", `/models/${version}/report`) };
      renderDetail();
      section.scrollIntoView({ block: "start" });
    } catch (e) { SH.alert(body, "error", e.message); }
  }

  function renderDetail() {
    if (!detail) return;
    document.getElementById("detail-title").textContent = SH.t("models.detail_title", { version: detail.version });
    SH.renderRunReport(document.getElementById("detail-body"), detail.report, { reportUrl: `/ui/api/models/${detail.version}/report?download=true` });
  }

  // The simulations a version's shift score averages: versions trained before a simulation
  // existed were scored on fewer, so their figure is marked with its count.
  const SIMULATIONS = ["shift_macro_f1", "shift_skewed_macro_f1", "shift_swapped_macro_f1", "shift_noisy_macro_f1"];
  function shiftScoreCell(v) {
    if (v.shiftScore === undefined) return SH.num(v.shiftScore);
    const n = SIMULATIONS.filter((m) => v.metrics[m] !== undefined).length;
    if (n === SIMULATIONS.length) return SH.num(v.shiftScore);
    return h("span", { title: SH.t("models.shift_score_of", { n }), "data-testid": `shift-score-of-${v.version}` }, SH.num(v.shiftScore), h("sup", ` ${n}`));
  }

  function render() {
    const container = document.getElementById("versions");
    const links = document.getElementById("model-links");
    links.textContent = "";
    links.append(
      h("a", { href: SH.config.mlflow_ui_url, target: "_blank", rel: "noopener" }, SH.t("home.mlflow"), " ↗"),
      h("a", { href: SH.config.prefect_ui_url, target: "_blank", rel: "noopener" }, SH.t("home.prefect"), " ↗"));
    if (!data) return;
    const rollbackButton = document.getElementById("rollback");
    rollbackButton.disabled = !data.rollback_to;
    rollbackButton.title = data.rollback_to ? SH.t("models.rollback_hint", { to: data.rollback_to }) : SH.t("models.no_rollback");
    if (!data.versions.length) { container.textContent = ""; container.appendChild(h("div.empty-state", SH.t("models.none"))); return; }
    const rows = data.versions.map((v) => ({ ...v, version_n: Number(v.version), f1: v.metrics.eval_macro_f1, acc: v.metrics.eval_accuracy, shift: v.metrics.shift_macro_f1, shiftScore: v.metrics.shift_score, rows: v.fingerprint ? v.fingerprint.rows : null }));
    const hasShift = rows.some((r) => r.shift !== undefined);
    const hasShiftScore = rows.some((r) => r.shiftScore !== undefined);
    SH.table(container, [
      { key: "version_n", label: "models.version", num: true, render: (v) => h("span", h("strong", `v${v.version}`), v.champion ? h("span", " ", SH.badge("champion", SH.t("models.champion"))) : null) },
      { key: "created_ms", label: "models.created", render: (v) => h("span", { title: SH.when(new Date(v.created_ms).toISOString()) }, SH.day(v.created_ms)) },
      { key: "f1", label: "metric.eval_macro_f1", num: true, render: (v) => SH.num(v.f1) },
      ...(hasShift ? [{ key: "shift", label: "metric.shift_macro_f1", num: true, render: (v) => SH.num(v.shift) }] : []),
      ...(hasShiftScore ? [{ key: "shiftScore", label: "metric.shift_score", num: true, render: (v) => shiftScoreCell(v) }] : []),
      { key: "acc", label: "metric.eval_accuracy", num: true, render: (v) => SH.num(v.acc) },
      { key: "gate", label: "models.gate", sortable: false, render: (v) => { const g = (v.tags || {}).gate; return g ? h("span", { title: (v.tags || {}).gate_reason || "" }, SH.badge(g, SH.t(`gate.${g}`))) : "—"; } },
      { key: "rows", label: "models.rows", num: true, render: (v) => SH.int(v.rows) },
      { key: "sha", label: "models.fingerprint", sortable: false, render: (v) => h("code", { title: (v.fingerprint || {}).sha256 || "" }, shortSha((v.fingerprint || {}).sha256 || (v.tags || {})["data.sha256"])) },
      { key: "mix", label: "models.class_mix", sortable: false, render: (v) => classMix(v.fingerprint) },
      { key: "actions", label: "models.actions", sortable: false, render: (v) => h("span.row",
        v.champion ? null : h("button", { onclick: (e) => { e.stopPropagation(); promote(v); }, "data-testid": `promote-${v.version}` }, SH.t("models.promote")),
        h("button", { onclick: (e) => { e.stopPropagation(); showDetail(v.version); } }, SH.t("models.details")),
        h("a.button", { href: `/ui/api/models/${v.version}/archive`, download: "", onclick: (e) => e.stopPropagation(), title: SH.t("report.download_model", { version: v.version }), "aria-label": SH.t("report.download_model", { version: v.version }) }, "⤓ .zip"),
        v.mlflow_run_url ? h("a", { href: v.mlflow_run_url, target: "_blank", rel: "noopener", onclick: (e) => e.stopPropagation() }, "MLflow ↗") : null) },
    ], SH.localSource(rows), { pageSize: 25 });
  }

  async function load() {
    try {
      data = await SH.api("GET", "/models");
      SH.alert(document.getElementById("models-status"), "info", null);
      render();
    } catch (e) { SH.alert(document.getElementById("models-status"), "error", e.message); }
  }

  window.Page = {
    start() {
      document.getElementById("rollback").addEventListener("click", rollback);
      document.getElementById("detail-close").addEventListener("click", () => { document.getElementById("version-detail").hidden = true; detail = null; });
      load();
      SH.onLang(() => { render(); renderDetail(); });
    },
  };
})();
