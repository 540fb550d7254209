/* Overview: the champion, the job queue, recent jobs, links to the other tools. */
(function () {
  "use strict";
  const h = SH.h;
  let status = null, recent = [];

  function render() {
    const body = document.getElementById("champion-body");
    body.textContent = "";
    const c = status && status.champion;
    if (!c) {
      body.appendChild(h("div.alert.info", SH.t("home.no_champion")));
    } else {
      const m = c.metrics || {};
      body.classList.remove("muted");
      body.append(
        h("div.figures",
          SH.figure(SH.t("models.version"), `v${c.version}`),
          SH.figure(SH.t("metric.eval_macro_f1"), SH.num(m.eval_macro_f1)),
          SH.figure(SH.t("metric.eval_accuracy"), SH.num(m.eval_accuracy)),
          SH.figure(SH.t("models.rows"), SH.int((c.fingerprint || {}).rows))),
        h("p.small.muted", SH.t("models.registered"), " ", SH.when(new Date(c.created_ms).toISOString()), " · ",
          SH.t("models.gate"), " ", h("code", (c.tags || {}).gate_reason || "—")),
        h("div.row", h("a.button", { href: "/ui/models" }, SH.t("home.see_models")),
          h("a.button", { href: `/ui/api/models/${c.version}/archive`, download: "" }, "⤓ ", SH.t("report.download_model", { version: c.version }))));
    }
    const q = document.getElementById("queue-body");
    q.textContent = "";
    const queue = (status && status.queue) || {};
    q.appendChild(h("div.figures",
      SH.figure(SH.t("home.training_running"), (queue.train || {}).running ?? 0),
      SH.figure(SH.t("home.training_queued"), (queue.train || {}).queued ?? 0),
      SH.figure(SH.t("home.diagnosis_running"), (queue.diagnose || {}).running ?? 0),
      SH.figure(SH.t("home.diagnosis_queued"), (queue.diagnose || {}).queued ?? 0)));
    const list = document.getElementById("recent-jobs");
    list.textContent = "";
    if (!recent.length) list.appendChild(h("div.empty-state", SH.t("home.no_jobs")));
    else SH.table(list, [
      { key: "kind", label: "job.kind", render: (j) => SH.t(`job.kind_${j.kind}`) },
      { key: "source", label: "job.file" },
      { key: "status", label: "job.status", render: (j) => SH.badge(j.status) },
      { key: "created_at", label: "job.created", render: (j) => SH.when(j.created_at) },
    ], SH.localSource(recent), { pageSize: 10, onRow: (j) => { location.href = `/ui/${j.kind === "train" ? "train" : "diagnose"}?job=${j.id}`; } });
    const links = document.getElementById("tool-links");
    links.textContent = "";
    links.append(
      h("a", { href: "/docs" }, SH.t("home.api_docs")),
      h("a", { href: SH.config.mlflow_ui_url, target: "_blank", rel: "noopener" }, SH.t("home.mlflow"), " ↗"),
      h("a", { href: SH.config.prefect_ui_url, target: "_blank", rel: "noopener" }, SH.t("home.prefect"), " ↗"),
      h("span.muted.small", SH.t("home.tools_hint")));
  }

  async function refresh() {
    [status, recent] = await Promise.all([SH.api("GET", "/status"), SH.api("GET", "/jobs")]);
    render();
    return true;
  }

  window.Page = {
    start() {
      SH.onLang(render);
      SH.poll(refresh, 3000);
    },
  };
})();
