/* Charts of the operator admin, drawn with the vendored Apache ECharts.
   Each element with data-chart="bar|ndcg|map" is drawn from the json_script named by data-source
   (or, for the map, the JSON at data-url); data-refresh-seconds reloads the page while work is
   in progress, unless the operator has started selecting rows; select[data-autosubmit] submits its
   form on change. */
(function () {
  "use strict";

  function source(el) {
    return JSON.parse(document.getElementById(el.dataset.source).textContent);
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function bar(el) {
    var data = source(el);
    var chart = echarts.init(el);
    chart.setOption({
      animation: false,
      grid: { left: 50, right: 20, top: 20, bottom: 40 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: data.labels, axisLabel: { interval: 5 } },
      yAxis: { type: "value", minInterval: 1 },
      series: [{ name: "interactions", type: "bar", data: data.values, itemStyle: { color: "#417690" } }],
    });
    return chart;
  }

  function ndcg(el) {
    var rows = source(el);
    var chart = echarts.init(el);
    chart.setOption({
      animation: false,
      grid: { left: 50, right: 20, top: 40, bottom: 30 },
      tooltip: { trigger: "axis" },
      legend: { data: ["model", "popularity"], top: 0, right: 10 },
      xAxis: { type: "category", data: rows.map(function (r) { return "v" + r.version + " " + r.algorithm; }) },
      yAxis: { type: "value", name: "NDCG@10" },
      series: [
        { name: "model", type: "line", data: rows.map(function (r) { return r.ndcg; }), symbolSize: 8 },
        { name: "popularity", type: "line", data: rows.map(function (r) { return r.baseline; }), lineStyle: { type: "dashed" } },
      ],
    });
    return chart;
  }

  function map(el) {
    var chart = echarts.init(el);
    chart.showLoading();
    fetch(el.dataset.url, { credentials: "same-origin" })
      .then(function (answer) { return answer.json(); })
      .then(function (points) {
        var series = points.groups.map(function (label) {
          return { name: label, type: "scatter", symbolSize: 5, data: [], emphasis: { focus: "series" } };
        });
        for (var i = 0; i < points.x.length; i++) {
          series[points.group[i]].data.push([points.x[i], points.y[i], points.item[i], points.title[i]]);
        }
        series = series.filter(function (s) { return s.data.length > 0; });
        chart.hideLoading();
        chart.setOption({
          animation: false,
          legend: { type: "scroll", top: 0 },
          grid: { left: 40, right: 20, top: 40, bottom: 30 },
          tooltip: {
            trigger: "item",
            formatter: function (p) { return escapeHtml(p.data[3]) + "<br><span style='opacity:.7'>" + escapeHtml(p.seriesName) + "</span>"; },
          },
          xAxis: { type: "value", scale: true, splitLine: { show: false } },
          yAxis: { type: "value", scale: true, splitLine: { show: false } },
          dataZoom: [{ type: "inside", xAxisIndex: 0, filterMode: "none" }, { type: "inside", yAxisIndex: 0, filterMode: "none" }],
          series: series,
        });
        chart.on("click", function (p) {
          window.location.href = el.dataset.itemUrl.replace("{id}", p.data[2]);
        });
        el.dataset.points = String(points.x.length); // read by the end-to-end test
      })
      .catch(function (error) {
        chart.hideLoading();
        el.textContent = "The map could not be loaded: " + error;
      });
    return chart;
  }

  var draw = { bar: bar, ndcg: ndcg, map: map };

  document.addEventListener("DOMContentLoaded", function () {
    var charts = [];
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var chart = draw[el.dataset.chart](el);
      charts.push(chart);
      if (el.dataset.chart === "map") { window.recsysMap = chart; }
    });
    window.addEventListener("resize", function () { charts.forEach(function (c) { c.resize(); }); });

    // Instead of inline onchange handlers, which the admin's Content-Security-Policy refuses.
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });

    var refresh = document.querySelector("[data-refresh-seconds]");
    if (refresh) {
      setTimeout(function () {
        if (!document.querySelector("input.action-select:checked")) { window.location.reload(); }
      }, 1000 * Number(refresh.dataset.refreshSeconds));
    }
  });
})();
