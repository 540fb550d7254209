/* Train: upload → validation report → queue a training job → live progress → results. */
(function () {
  "use strict";
  const h = SH.h;
  let upload = null;        // the last upload's answer (validation report, class counts)
  let currentJob = null;    // the job shown in the job panel
  let stopPolling = null;
  let jobsTable = null;

  function renderUpload() {
    const report = document.getElementById("validation-report");
    const mix = document.getElementById("upload-class-mix");
    const button = document.getElementById("start-training");
    const hint = document.getElementById("start-hint");
    if (!upload) return;
    SH.renderValidation(report, upload.validation);
    const counts = upload.class_counts || {};
    mix.hidden = !upload.ok;
    if (upload.ok) {
      Charts.bar(mix, {
        labels: SH.config.fault_classes.map(SH.cls), values: SH.config.fault_classes.map((c) => counts[String(c)] || 0),
        xTitle: SH.t("chart.fault_class"), yTitle: SH.t("chart.incidents"),
      });
    }
    button.disabled = !upload.ok;
    hint.textContent = upload.ok ? SH.t("train.ready", { file: upload.filename }) : SH.t("train.fix_first");
  }

  async function sendFile(file, error) {
    const status = document.getElementById("train-upload-status");
    if (error) {
      // The file picked last was refused here: forget the earlier upload, so that the page
      // neither shows its report nor offers to train on it under this error.
      upload = null;
      SH.alert(status, "error", error);
      SH.renderValidation(document.getElementById("validation-report"), null);
      document.getElementById("upload-class-mix").hidden = true;
      document.getElementById("start-training").disabled = true;
      document.getElementById("start-hint").textContent = SH.t("train.fix_first");
      document.querySelector("#train-drop .file-name").textContent = "";
      return;
    }
    SH.alert(status, "info", SH.t("upload.validating", { file: file.name }));
    document.getElementById("start-training").disabled = true;
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("purpose", "train");
    try {
      upload = await SH.api("POST", "/uploads", form);
      SH.alert(status, upload.ok ? "ok" : "error", upload.ok ? SH.t("upload.valid", { file: upload.filename }) : `${SH.t("upload.invalid", { file: upload.filename })}\n${upload.error || ""}`);
      renderUpload();
    } catch (e) {
      upload = null;
      SH.alert(status, "error", e.message);
      SH.renderValidation(document.getElementById("validation-report"), e.payload && e.payload.validation);
    }
  }

  async function startTraining() {
    if (!upload || !upload.ok) return;
    const button = document.getElementById("start-training");
    button.disabled = true;
    try {
      const job = await SH.api("POST", "/training-jobs", { upload_id: upload.upload_id });
      SH.toast(SH.t("train.queued_toast", { file: job.source }));
      upload = null;
      document.getElementById("start-hint").textContent = SH.t("train.started");
      showJob(job.id);
      jobsTable && jobsTable.reload();
    } catch (e) {
      SH.alert(document.getElementById("train-upload-status"), "error", e.message);
      button.disabled = false;
    }
  }

  function stageList(progress) {
    const done = new Set((progress && progress.stages_done) || []);
    const current = progress && progress.stage;
    return h("div.stages", ["validate", "preprocess", "train", "evaluate", "register", "gate"].map((s) =>
      h("span.stage" + (done.has(s) ? ".done" : s === current ? ".current" : ""), (done.has(s) ? "✓ " : "") + SH.t(`stage.${s}`))));
  }

  function renderProgress(job) {
    const box = document.getElementById("job-progress");
    box.textContent = "";
    const p = job.progress || {};
    if (job.status === "queued") {
      box.appendChild(h("div.alert.info", { "data-testid": "queue-position" }, SH.t("job.queue_position", { position: job.queue_position ?? "?", running: job.running })));
      return;
    }
    if (job.status === "running") {
      const history = p.history || [];
      const last = history[history.length - 1] || {};
      const max = p.max_epochs || SH.config.max_epochs;
      const members = SH.config.ensemble_size || 1, member = last.member || 0;
      const where = (members > 1 ? SH.t("job.member", { member: member + 1, members }) + " · " : "") + SH.t("job.epoch", { epoch: p.epoch || 0, max });
      const share = (member * max + (p.epoch || 0)) / (members * max);
      box.append(
        stageList(p),
        h("div.row", h("strong", { "data-testid": "epoch" }, where), h("span.muted.small", SH.t("job.early_stop"))),
        h("div.progress", h("div", { style: `width:${Math.min(100, 100 * share).toFixed(1)}%` })),
        h("div.figures", { style: "margin-top:12px" },
          SH.figure(SH.t("chart.train_loss"), SH.num(last.train_loss)),
          SH.figure(SH.t("chart.val_loss"), SH.num(last.val_loss)),
          SH.figure(SH.t("chart.val_f1"), SH.num(last.val_macro_f1))),
        h("div.chart", { id: "live-loss" }));
      if (job.waiting_for) box.appendChild(h("div.alert.info", SH.t("job.waiting_lock", { holder: job.waiting_for })));
      else if (!history.length) box.appendChild(h("p.muted.small", p.stage === "starting" ? SH.t("job.starting") : SH.t("job.preparing")));
      else Charts.lines(box.querySelector("#live-loss"), {
        series: [...SH.lossSeries(history), ...SH.historySeries(history, "val_macro_f1", SH.t("chart.val_f1"), Charts.PALETTE[2])],
        xTitle: SH.t("chart.epoch"), xMin: 1, xMax: max,
      });
      return;
    }
    if (job.status === "failed") {
      box.appendChild(h("div.alert.error", { role: "alert" }, SH.t("job.failed"), "\n", job.error || ""));
      const detail = job.error_detail && job.error_detail.validation;
      if (detail) { const v = h("div"); SH.renderValidation(v, detail); box.appendChild(v); }
      return;
    }
    if (job.status === "cancelled") box.appendChild(h("div.alert.warn", SH.t("job.was_cancelled")));
    if (job.status === "succeeded") box.appendChild(stageList({ stages_done: ["validate", "preprocess", "train", "evaluate", "register", "gate"] }));
  }

  function renderJob(job) {
    currentJob = job;
    document.getElementById("job-panel").hidden = false;
    document.getElementById("job-title").textContent = SH.t("job.training_title", { file: job.source });
    const status = document.getElementById("job-status");
    status.textContent = "";
    status.appendChild(SH.badge(job.status));
    status.appendChild(h("span.muted.small", "  ", SH.when(job.created_at)));
    // Once the model is being registered a cancel is refused (409): no button for it.
    const registering = ["register", "gate", "done"].includes((job.progress || {}).stage);
    document.getElementById("cancel-job").hidden = !["queued", "running"].includes(job.status) || registering;
    renderProgress(job);
    const result = document.getElementById("job-result");
    if (job.status === "succeeded" && job.result) {
      SH.renderRunReport(result, job.result.report, { reportUrl: `/ui/api/jobs/${job.id}/download/report.json` });
    } else {
      result.textContent = "";
    }
  }

  function showJob(id) {
    if (stopPolling) stopPolling();
    SH.setParam("job", id);
    let lastStatus = null;
    stopPolling = SH.poll(async () => {
      let job;
      try {
        job = await SH.api("GET", `/jobs/${id}`);
      } catch (e) {
        SH.alert(document.getElementById("job-progress"), "error", e.message);
        document.getElementById("job-panel").hidden = false;
        return false;
      }
      renderJob(job);
      if (job.status !== lastStatus && jobsTable) jobsTable.reload();
      lastStatus = job.status;
      return ["queued", "running"].includes(job.status);
    }, 1000);
  }

  function jobsList() {
    const container = document.getElementById("training-jobs");
    const source = async (state) => {
      const jobs = await SH.api("GET", "/jobs?kind=train");
      if (!jobs.length) return { total: 0, rows: [] };
      return SH.localSource(jobs)(state);
    };
    jobsTable = SH.table(container, [
      { key: "source", label: "job.file" },
      { key: "status", label: "job.status", render: (j) => SH.badge(j.status) },
      { key: "queue_position", label: "job.position", num: true, render: (j) => (j.status === "queued" ? `#${j.queue_position}` : "") },
      { key: "epoch", label: "job.progress", sortable: false, render: (j) => (j.status === "running" && j.progress ? SH.t(`stage.${j.progress.stage}`) + (j.progress.epoch ? ` · ${SH.t("job.epoch", { epoch: j.progress.epoch, max: j.progress.max_epochs })}` : "") : "") },
      { key: "created_at", label: "job.created", render: (j) => SH.when(j.created_at) },
      { key: "finished_at", label: "job.finished", render: (j) => SH.when(j.finished_at) },
    ], source, { pageSize: 10, onRow: (j) => showJob(j.id) });
  }

  window.Page = {
    start() {
      document.getElementById("train-limit").textContent = SH.t("upload.limit", { limit: SH.bytes(SH.config.max_upload_bytes) });
      SH.dropzone(document.getElementById("train-drop"), sendFile);
      document.getElementById("start-training").addEventListener("click", startTraining);
      document.getElementById("cancel-job").addEventListener("click", async () => {
        if (!currentJob) return;
        if (!(await SH.confirm(SH.t("job.cancel_title"), SH.t("job.cancel_text", { file: currentJob.source }), SH.t("job.cancel")))) return;
        try { await SH.api("POST", `/jobs/${currentJob.id}/cancel`); showJob(currentJob.id); } catch (e) { SH.toast(e.message, "error"); }
      });
      jobsList();
      setInterval(() => jobsTable && jobsTable.reload(), 5000);
      const id = SH.param("job");
      if (id) showJob(id);
      SH.onLang(() => {
        document.getElementById("train-limit").textContent = SH.t("upload.limit", { limit: SH.bytes(SH.config.max_upload_bytes) });
        renderUpload();
        if (currentJob) renderJob(currentJob);
        jobsTable && jobsTable.reload();
      });
    },
  };
})();
