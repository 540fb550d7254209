/* Diagnose: one incident (form or JSON) or a file (background job) → table, charts, downloads. */
(function () {
  "use strict";
  const h = SH.h;
  let lastInline = null;   // answer of an inline (JSON/form) diagnosis
  let currentJob = null;
  let stopPolling = null;
  let jobsTable = null;
  let deploymentsLoaded = Promise.resolve();

  function deployment() {
    return document.getElementById("deployment").value || null;
  }

  async function loadDeployments(select) {
    const el = document.getElementById("deployment");
    const list = await SH.api("GET", "/deployments");
    el.textContent = "";
    el.appendChild(h("option", { value: "" }, SH.t("diagnose.training_stats")));
    list.forEach((d) => el.appendChild(h("option", { value: d.name }, `${d.name} (${SH.int(d.rows)} ${SH.t("diagnose.rows")})`)));
    if (select) el.value = select;
    showRemove();
  }

  function showRemove() {
    document.getElementById("deploy-remove").hidden = !deployment();
  }

  async function removeDeployment() {
    const name = deployment();
    if (!name) return;
    if (!(await SH.confirm(SH.t("deploy.remove_title", { name }), SH.t("deploy.remove_text", { name }), SH.t("deploy.remove_ok")))) return;
    try {
      await SH.api("DELETE", `/deployments/${encodeURIComponent(name)}`);
      SH.toast(SH.t("deploy.removed", { name }));
    } catch (e) {
      SH.toast(e.message, "error");
    }
    await loadDeployments().catch((e) => SH.toast(e.message, "error"));
  }

  function showTab(name) {
    document.querySelectorAll("[data-tab]").forEach((b) => {
      b.classList.toggle("active", b.dataset.tab === name);
      b.setAttribute("aria-selected", String(b.dataset.tab === name));
    });
    document.querySelectorAll("[data-pane]").forEach((p) => { p.hidden = p.dataset.pane !== name; });
    SH.alert(document.getElementById("diagnose-status"), "info", null);
  }

  function buildForm() {
    const grid = document.getElementById("feature-grid");
    SH.config.features.forEach((f) => grid.appendChild(h("label", f, h("input", { type: "text", inputmode: "decimal", name: f, "data-feature": f }))));
  }

  const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

  function formIncident() {
    const incident = {};
    const sid = document.getElementById("form-sample-id").value.trim();
    if (sid) incident.sample_id = sid;
    const bad = [];
    document.querySelectorAll("[data-feature]").forEach((input) => {
      const text = input.value.trim();
      if (!text) return;
      // Decimal or scientific notation only, as files and JSON are read: Number() would also
      // take "0x10", "0b11" and "0o7".
      const value = DECIMAL.test(text) ? Number(text) : NaN;
      if (!Number.isFinite(value)) bad.push(input.dataset.feature);
      else incident[input.dataset.feature] = value;
    });
    if (bad.length) throw new Error(SH.t("diagnose.not_numbers", { fields: bad.slice(0, 5).join(", ") }));
    return incident;
  }

  async function example() {
    return (await SH.api("GET", "/diagnose/example")).incident;
  }

  async function diagnoseInline(payload) {
    const status = document.getElementById("diagnose-status");
    SH.alert(status, "info", SH.t("diagnose.working"));
    try {
      const answer = await SH.api("POST", "/diagnose", { ...payload, deployment: deployment() });
      if (!answer.ok) { SH.alert(status, "error", answer.error); return; }
      lastInline = answer;
      SH.alert(status, "ok", SH.t("diagnose.done_inline", { n: lastInline.rows }));
      if (stopPolling) stopPolling();
      currentJob = null;
      SH.setParam("job", null);
      document.getElementById("diag-job").hidden = true;
      renderInline();
    } catch (e) {
      SH.alert(status, "error", e.message);
    }
  }

  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function renderInline() {
    if (!lastInline) return;
    const rows = lastInline.diagnoses;
    const container = document.getElementById("diagnosis-results");
    SH.renderDiagnoses(container, lastInline, SH.localSource(rows), null);
    // Inline results are downloaded from the page itself (nothing stored on the server).
    const head = container.querySelector(".panel .row");
    const columns = ["sample_id", "predicted_label", "confidence", ...SH.config.fault_classes.map((c) => `proba_${c}`)];
    const csv = [columns.join(",")].concat(rows.map((r) => columns.map((c) => {
      const v = r[c];
      // Text quoted, as the server's files are: "007" stays text, not the number 7.
      return typeof v === "string" ? `"${v.replace(/"/g, '""')}"` : v;
    }).join(","))).join("\n") + "\n";
    const json = JSON.stringify(rows.map((r) => ({ sample_id: r.sample_id, predicted_label: r.predicted_label, confidence: r.confidence, probabilities: SH.config.fault_classes.map((c) => r[`proba_${c}`]), model_version: lastInline.model_version })), null, 1);
    head.append(
      h("button.primary", { onclick: () => download("diagnoses.csv", csv, "text/csv"), "data-testid": "download-csv" }, "⤓ CSV"),
      h("button", { onclick: () => download("diagnoses.json", json, "application/json"), "data-testid": "download-json" }, "⤓ JSON"));
  }

  async function sendFile(file, error) {
    const status = document.getElementById("diagnose-status");
    if (error) { SH.alert(status, "error", error); return; }
    SH.alert(status, "info", SH.t("upload.sending", { file: file.name }));
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("purpose", "diagnose");
    try {
      const upload = await SH.api("POST", "/uploads", form);
      if (!upload.ok) {
        SH.alert(status, "error", `${SH.t("upload.refused", { file: upload.filename })}\n${upload.error}`);
        return;
      }
      const job = await SH.api("POST", "/diagnosis-jobs", { upload_id: upload.upload_id, deployment: deployment() });
      SH.alert(status, "info", null);
      showJob(job.id);
      jobsTable && jobsTable.reload();
    } catch (e) {
      SH.alert(status, "error", e.message);
    }
  }

  function renderJob(job) {
    currentJob = job;
    const panel = document.getElementById("diag-job");
    panel.hidden = false;
    document.getElementById("diag-job-title").textContent = SH.t("job.diagnosis_title", { file: job.source });
    const badge = document.getElementById("diag-job-status");
    badge.textContent = "";
    badge.append(SH.badge(job.status), h("span.muted.small", "  ", SH.when(job.created_at)));
    document.getElementById("diag-cancel").hidden = !["queued", "running"].includes(job.status);
    const box = document.getElementById("diag-job-progress");
    box.textContent = "";
    const p = job.progress || {};
    if (job.status === "queued") box.appendChild(h("div.alert.info", SH.t("job.queue_position", { position: job.queue_position ?? "?", running: job.running })));
    if (job.status === "running") {
      const share = p.rows ? p.rows_done / p.rows : 0;
      box.append(h("p", SH.t(`stage.${p.stage || "reading"}`), p.rows ? ` — ${SH.t(p.rows_estimated ? "job.rows_done_about" : "job.rows_done", { done: SH.int(p.rows_done), total: SH.int(p.rows) })}` : ""),
        h("div.progress", h("div", { style: `width:${(100 * share).toFixed(1)}%` })));
    }
    if (job.status === "failed") {
      box.appendChild(h("div.alert.error", { role: "alert" }, SH.t("job.failed"), "\n", job.error || ""));
      const detail = job.error_detail && job.error_detail.validation;
      if (detail) { const v = h("div"); SH.renderValidation(v, detail); box.appendChild(v); }
    }
    if (job.status === "cancelled") box.appendChild(h("div.alert.warn", SH.t("job.was_cancelled")));
    const results = document.getElementById("diagnosis-results");
    if (job.status === "succeeded" && job.result) {
      if (job.result.warnings) box.appendChild(h("div.alert.warn", (job.result.deployment && job.result.deployment !== "training"
        ? SH.t("diagnose.drift_warnings_deployment", { n: job.result.warnings, name: job.result.deployment })
        : SH.t("diagnose.drift_warnings", { n: job.result.warnings })), " ",
        h("a", { href: `/ui/api/jobs/${job.id}/download/validation.json`, download: "" }, SH.t("diagnose.validation_report"))));
      const source = (state) => {
        const q = new URLSearchParams({ offset: state.offset, limit: state.limit });
        if (state.sort) { q.set("sort", state.sort); q.set("descending", state.descending); }
        return SH.api("GET", `/jobs/${job.id}/rows?${q}`);
      };
      SH.renderDiagnoses(results, job.result, source, {
        csv: `/ui/api/jobs/${job.id}/download/diagnoses.csv`, json: `/ui/api/jobs/${job.id}/download/diagnoses.json`,
      });
    } else {
      results.textContent = "";
    }
  }

  function showJob(id, restore = false) {
    if (stopPolling) stopPolling();
    lastInline = null;
    SH.setParam("job", id);
    let lastStatus = null;
    stopPolling = SH.poll(async () => {
      let job;
      try {
        job = await SH.api("GET", `/jobs/${id}`);
      } catch (e) {
        document.getElementById("diag-job").hidden = false;
        SH.alert(document.getElementById("diag-job-progress"), "error", e.message);
        return false;
      }
      if (restore) {  // a reloaded page: select the job's deployment again, as its results say
        restore = false;
        const name = job.params && job.params.deployment;
        deploymentsLoaded.then(() => {
          const el = document.getElementById("deployment");
          if (name && name !== "training" && [...el.options].some((o) => o.value === name)) { el.value = name; showRemove(); }
        });
      }
      if (job.status !== lastStatus || ["queued", "running"].includes(job.status)) renderJob(job);
      if (job.status !== lastStatus && jobsTable) jobsTable.reload();
      lastStatus = job.status;
      return ["queued", "running"].includes(job.status);
    }, 700);
  }

  async function calibrate() {
    const status = document.getElementById("deploy-status");
    const name = document.getElementById("deploy-name").value.trim();
    const file = document.getElementById("deploy-file").files[0];
    if (!name || !file) { SH.alert(status, "error", SH.t("deploy.need_both")); return; }
    if (file.size > SH.config.max_upload_bytes) { SH.alert(status, "error", SH.t("error.too_large", { size: SH.bytes(file.size), limit: SH.bytes(SH.config.max_upload_bytes) })); return; }
    const form = new FormData();
    form.append("name", name);
    form.append("file", file, file.name);
    SH.alert(status, "info", SH.t("upload.validating", { file: file.name }));
    try {
      const answer = await SH.api("POST", "/deployments", form);
      if (!answer.ok) { SH.alert(status, "error", answer.error); return; }
      const info = answer.deployment;
      let message = SH.t("deploy.done", { name: info.name, rows: SH.int(info.rows) });
      if (answer.class_mix) {
        const shares = answer.class_mix.map((share, c) => `${SH.cls(c)} ${(100 * share).toFixed(0)}%`).join(", ");
        message += " " + SH.t("deploy.mix", { shares });
      }
      SH.alert(status, "ok", message);
      // What the window lacks for the champion (empty or constant KPI columns, a small window).
      for (const warning of answer.warnings || []) status.appendChild(h("div.alert.warn", { "data-testid": "deploy-warning" }, warning));
      await loadDeployments(info.name);
    } catch (e) {
      SH.alert(status, "error", e.message);
    }
  }

  function jobsList() {
    jobsTable = SH.table(document.getElementById("diagnosis-jobs"), [
      { key: "source", label: "job.file" },
      { key: "status", label: "job.status", render: (j) => SH.badge(j.status) },
      { key: "deployment", label: "diagnose.deployment", sortable: false, render: (j) => (j.params && j.params.deployment) || SH.t("diagnose.training_stats") },
      { key: "created_at", label: "job.created", render: (j) => SH.when(j.created_at) },
    ], async (state) => SH.localSource(await SH.api("GET", "/jobs?kind=diagnose"))(state), { pageSize: 10, onRow: (j) => showJob(j.id) });
  }

  window.Page = {
    start() {
      document.getElementById("diag-limit").textContent = SH.t("upload.limit", { limit: SH.bytes(SH.config.max_upload_bytes) });
      document.querySelectorAll("[data-tab]").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
      buildForm();
      deploymentsLoaded = loadDeployments().catch((e) => SH.toast(e.message, "error"));
      SH.dropzone(document.getElementById("diag-drop"), sendFile);
      document.getElementById("calibrate-toggle").addEventListener("click", () => {
        const p = document.getElementById("calibrate-panel");
        p.hidden = !p.hidden;
      });
      document.getElementById("deploy-go").addEventListener("click", calibrate);
      document.getElementById("deployment").addEventListener("change", showRemove);
      document.getElementById("deploy-remove").addEventListener("click", removeDeployment);
      document.getElementById("form-go").addEventListener("click", () => {
        try { diagnoseInline({ incident: formIncident() }); } catch (e) { SH.alert(document.getElementById("diagnose-status"), "error", e.message); }
      });
      document.getElementById("form-clear").addEventListener("click", () => document.querySelectorAll("[data-feature]").forEach((i) => { i.value = ""; }));
      document.getElementById("form-example").addEventListener("click", async () => {
        try {
          const incident = await example();
          document.querySelectorAll("[data-feature]").forEach((i) => { const v = incident[i.dataset.feature]; i.value = v === null || v === undefined ? "" : v; });
        } catch (e) { SH.alert(document.getElementById("diagnose-status"), "error", e.message); }
      });
      const textarea = document.getElementById("json-input");
      textarea.placeholder = '{"sample_id": "inc-1", "feature0": 0.5, "feature2": 1.25}';
      document.getElementById("json-example").addEventListener("click", async () => {
        try { textarea.value = JSON.stringify(await example(), null, 1); } catch (e) { SH.alert(document.getElementById("diagnose-status"), "error", e.message); }
      });
      document.getElementById("json-go").addEventListener("click", () => {
        let parsed;
        try { parsed = JSON.parse(textarea.value); } catch (e) {
          SH.alert(document.getElementById("diagnose-status"), "error", SH.t("diagnose.bad_json", { message: e.message }));
          return;
        }
        // JSON.parse reads 1e400 as Infinity, which JSON.stringify would send as null (missing).
        const infinite = (function bad(v) { return typeof v === "number" ? !Number.isFinite(v) : v !== null && typeof v === "object" && Object.values(v).some(bad); })(parsed);
        if (parsed === null || typeof parsed !== "object" || infinite) {
          SH.alert(document.getElementById("diagnose-status"), "error", SH.t(infinite ? "diagnose.json_infinite" : "diagnose.json_shape"));
          return;
        }
        diagnoseInline(Array.isArray(parsed) ? { incidents: parsed } : { incident: parsed });
      });
      document.getElementById("diag-cancel").addEventListener("click", async () => {
        if (!currentJob) return;
        if (!(await SH.confirm(SH.t("job.cancel_title"), SH.t("job.cancel_text", { file: currentJob.source }), SH.t("job.cancel")))) return;
        try { await SH.api("POST", `/jobs/${currentJob.id}/cancel`); showJob(currentJob.id); } catch (e) { SH.toast(e.message, "error"); }
      });
      jobsList();
      const id = SH.param("job");
      if (id) showJob(id, true);
      SH.onLang(() => {
        document.getElementById("diag-limit").textContent = SH.t("upload.limit", { limit: SH.bytes(SH.config.max_upload_bytes) });
        loadDeployments(deployment()).catch(() => {});
        if (lastInline) renderInline();
        else if (currentJob) renderJob(currentJob);
        jobsTable && jobsTable.reload();
      });
    },
  };
})();
