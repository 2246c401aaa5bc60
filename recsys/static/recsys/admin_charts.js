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

  // data: {labels, series: [{name, values, type: "bar"|"line", axis: 0|1}]}; a series on axis 1
  // is read against a second y axis on the right (arrival spikes next to steady event counts).
  function bar(el) {
    var data = source(el);
    var chart = echarts.init(el);
    var colours = ["#417690", "#e0823d"];
    var twoAxes = data.series.some(function (s) { return s.axis === 1; });
    chart.setOption({
      animation: false,
      grid: { left: 60, right: twoAxes ? 60 : 20, top: 40, bottom: 40 },
      tooltip: { trigger: "axis" },
      legend: { top: 0, right: 10 },
      xAxis: { type: "category", data: data.labels, axisLabel: { interval: 5 } },
      yAxis: [
        { type: "value", minInterval: 1, name: data.series[0].name },
        { type: "value", minInterval: 1, show: twoAxes, splitLine: { show: false }, name: twoAxes ? data.series[data.series.length - 1].name : "" },
      ],
      series: data.series.map(function (s, n) {
        return {
          name: s.name, type: s.type || "bar", data: s.values, yAxisIndex: s.axis || 0,
          itemStyle: { color: colours[n % colours.length] }, symbolSize: 4, step: s.type === "line" ? "middle" : false,
        };
      }),
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

  function median(values) {
    var sorted = values.slice().sort(function (a, b) { return a - b; });
    return sorted[Math.floor(sorted.length / 2)];
  }

  // Each named, compact group's label at the median of its points: a group spread over the whole
  // map (categories of a collaborative model) would only pile its label onto the others'.
  var UNNAMED = { other: true, uncategorised: true, "no cluster": true };
  function groupLabels(series) {
    var all = [].concat.apply([], series.map(function (s) { return s.data; }));
    var centre = [median(all.map(function (d) { return d[0]; })), median(all.map(function (d) { return d[1]; }))];
    var spread = function (data, m) { return median(data.map(function (d) { return Math.hypot(d[0] - m[0], d[1] - m[1]); })); };
    var overall = spread(all, centre);
    return series.filter(function (s) { return !UNNAMED[s.name] && s.data.length > 0; }).map(function (s) {
      var m = [median(s.data.map(function (d) { return d[0]; })), median(s.data.map(function (d) { return d[1]; }))];
      return { value: m, name: s.name, compact: spread(s.data, m) < 0.5 * overall };
    }).filter(function (label) { return label.compact; });
  }

  function map(el) {
    var chart = echarts.init(el);
    chart.showLoading();
    fetch(el.dataset.url, { credentials: "same-origin" })
      .then(function (answer) { return answer.json(); })
      .then(function (points) {
        var colours = points.colours || [];
        var series = points.groups.map(function (label, n) {
          return {
            name: label, type: "scatter", symbolSize: 6, data: [], emphasis: { focus: "series" },
            itemStyle: colours[n] ? { color: colours[n], opacity: 0.85 } : { opacity: 0.85 },
          };
        });
        for (var i = 0; i < points.x.length; i++) {
          series[points.group[i]].data.push([points.x[i], points.y[i], points.item[i], points.title[i]]);
        }
        series = series.filter(function (s) { return s.data.length > 0; });
        var labels = groupLabels(series);
        series.push({
          name: "names", type: "scatter", symbolSize: 0, silent: true, z: 10, data: labels,
          label: {
            show: true, formatter: "{b}", fontSize: 12, fontWeight: "bold", color: "#1f2d3a",
            backgroundColor: "rgba(255,255,255,0.8)", padding: [2, 4], borderRadius: 3,
          },
        });
        chart.hideLoading();
        chart.setOption({
          animation: false,
          color: colours,
          legend: { type: "scroll", top: 0, data: series.slice(0, -1).map(function (s) { return s.name; }) },
          grid: { left: 20, right: 20, top: 40, bottom: 20 },
          tooltip: {
            trigger: "item",
            formatter: function (p) { return escapeHtml(p.data[3]) + "<br><span style='opacity:.7'>" + escapeHtml(p.seriesName) + "</span>"; },
          },
          xAxis: { type: "value", scale: true, show: false },
          yAxis: { type: "value", scale: true, show: false },
          dataZoom: [{ type: "inside", xAxisIndex: 0, filterMode: "none" }, { type: "inside", yAxisIndex: 0, filterMode: "none" }],
          series: series,
        });
        chart.on("click", function (p) {
          if (p.seriesName !== "names") { window.location.href = el.dataset.itemUrl.replace("{id}", p.data[2]); }
        });
        el.dataset.points = String(points.x.length); // read by the end-to-end tests
        el.dataset.groups = series.slice(0, -1).map(function (s) { return s.name; }).join("|");
        el.dataset.labels = labels.map(function (l) { return l.name; }).join("|");
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
