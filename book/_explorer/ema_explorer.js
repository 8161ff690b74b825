/* The explorable figure of chapter 7: a running mean chasing a drifting population mean.
 *
 * Loaded by chapter 7's page only (not from book/_static, whose scripts every page
 * loads). Every number is a closed form, the same as bnlib's (checked by the browser
 * tests in tests/test_site.py):
 *   band(...)  = bnlib.running_mean_band  (expected error and noise sd at step t;
 *                EMA, debiased EMA, cumulative average)
 *   rule       = bnlib.trusts_ema_tracking, with s* from chapter 7's stored outputs
 *                (book/_explorer/ema_explorer_data.js, written by scripts/explorer_data.py)
 * Units: population standard deviations. No randomness: the bands are the expected
 * running mean +- 1 and 2 standard deviations of its batch noise.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  // Okabe-Ito colours, distinguishable with the common colour-vision deficiencies.
  var COLOURS = { population: "currentColor", ema: "#0072B2", debiased: "#D55E00", cumulative: "#009E73" };

  // ------------------------------------------------------------------ closed forms
  function emaNoiseSd(alpha, m, t) {           // bnlib.ema_noise_sd
    var rho = 1 - alpha;
    var fading = t === Infinity ? 1 : 1 - Math.pow(rho, 2 * t);
    return Math.sqrt(alpha * fading / ((2 - alpha) * m));
  }

  function band(kind, alpha, m, drift, t, start) {   // bnlib.running_mean_band -> [error, noise sd]
    if (kind === "cumulative") {
      return [drift * (t + 1) / 2, 1 / Math.sqrt(t * m)];
    }
    var rho = 1 - alpha;
    if (kind === "ema") {                          // start-up bias + lag after the update
      var left = Math.pow(rho, t);
      return [left * start + drift * (1 - left) / alpha, emaNoiseSd(alpha, m, t)];
    }
    var filled = alpha < 1 ? -Math.expm1(t * Math.log1p(-alpha)) : 1;   // 1 - rho^t
    var ages = 0;
    for (var j = 0, p = 1; j < t; j++, p *= rho) {
      ages += j * p;
    }
    return [drift * (1 + alpha * ages / filled), emaNoiseSd(alpha, m, t) / filled];
  }

  function steadyRms(alpha, m, drift) {           // bnlib.ema_error(alpha, m, drift, after_update=True)
    return Math.hypot(drift / alpha, emaNoiseSd(alpha, m, Infinity));
  }

  function niceTicks(lo, hi) {                     // about five round values in [lo, hi]
    var raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (f) { return f * mag; }).filter(function (v) { return v >= raw; })[0];
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-12 * step; v += step) ticks.push(v);
    return ticks;
  }

  function horizon(alpha) {                        // steps shown: five windows, within 50..2000
    return Math.min(2000, Math.max(50, Math.round(5 / alpha)));
  }

  // ------------------------------------------------------------------ formatting
  function fmt(x) {                                // four significant digits
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1e5 || a < 1e-3) return x.toExponential(3).replace("e+", "e");
    return x.toPrecision(4);
  }

  function plain(x) {                              // a grid value as written in the data file
    return String(x);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    return node;
  }

  // ------------------------------------------------------------------ the widget
  function build(root, data) {
    var state = {
      alpha: data.alpha.indexOf(data.defaults.alpha),
      drift: data.drift.indexOf(data.defaults.drift),
      m: data.batch_size.indexOf(data.defaults.batch_size),
      debiased: false,
      cumulative: false
    };
    var start = data.start_distance;
    root.textContent = "";
    root.classList.add("emx");

    var controls = el("div", { "class": "emx-controls" });
    function slider(key, label, values, describe) {
      var id = "emx-" + key;
      var row = el("div", { "class": "emx-row" });
      row.appendChild(el("label", { "for": id }, label));
      var input = el("input", {
        type: "range", id: id, min: "0", max: String(values.length - 1), step: "1",
        value: String(state[key]), "data-key": key
      });
      var out = el("output", { "for": id, id: id + "-value", "aria-live": "off" });   // the slider's aria-valuetext is read
      row.appendChild(input);
      row.appendChild(out);
      controls.appendChild(row);
      input.addEventListener("input", function () {
        state[key] = Number(input.value);
        update();
      });
      return { input: input, out: out, values: values, describe: describe };
    }
    var sliders = [
      slider("alpha", "BN momentum \u03b1 (PyTorch; log scale)", data.alpha, function (v) {
        return "\u03b1 = " + plain(v) + ", \u03c1 = 1 \u2212 \u03b1 = " + fmt(1 - v);
      }),
      slider("drift", "Drift of the population mean per step (population sd)", data.drift, function (v) {
        return "drift = " + plain(v) + " sd per step";
      }),
      slider("m", "Batch size m (examples per batch)", data.batch_size, function (v) {
        return "m = " + plain(v);
      })
    ];
    function toggle(key, label) {
      var id = "emx-" + key;
      var row = el("div", { "class": "emx-row emx-toggle" });
      var box = el("input", { type: "checkbox", id: id, "data-key": key });
      row.appendChild(box);
      row.appendChild(el("label", { "for": id }, label));
      controls.appendChild(row);
      box.addEventListener("change", function () {
        state[key] = box.checked;
        update();
      });
    }
    toggle("debiased", "Show the debiased EMA (divided by 1 \u2212 \u03c1\u1d57)");
    toggle("cumulative", "Show the cumulative average (momentum=None)");
    root.appendChild(controls);

    var takeaway = el("p", { "class": "emx-takeaway", "data-q": "takeaway" });
    root.appendChild(takeaway);
    var W = 680, H = 330, L = 64, R = 16, T = 28, B = 46;
    var plot = svg("svg", {
      viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
      "aria-labelledby": "emx-svg-title emx-svg-desc", "class": "emx-plot"
    });
    var title = svg("title", { id: "emx-svg-title" });
    var desc = svg("desc", { id: "emx-svg-desc" });
    plot.appendChild(title);
    plot.appendChild(desc);
    var layer = svg("g", {});
    plot.appendChild(layer);
    root.appendChild(plot);

    var legend = el("ul", { "class": "emx-legend" });
    root.appendChild(legend);

    var readout = el("dl", { "class": "emx-readout" });
    root.appendChild(readout);
    var verdict = el("p", { "class": "emx-verdict", "aria-live": "polite", "data-q": "verdict" });
    root.appendChild(verdict);

    function row(q, term, value, note) {
      var dt = el("dt", {}, term);
      var dd = el("dd", {});
      dd.appendChild(el("span", { "data-q": q }, value));
      if (note) dd.appendChild(document.createTextNode(" " + note));
      readout.appendChild(dt);
      readout.appendChild(dd);
    }

    function update() {
      var alpha = data.alpha[state.alpha], drift = data.drift[state.drift], m = data.batch_size[state.m];
      sliders.forEach(function (s) {
        var text = s.describe(s.values[Number(s.input.value)]);
        s.input.setAttribute("aria-valuetext", text);
        s.out.textContent = text;
      });
      var steps = horizon(alpha);
      var curves = [["ema", "EMA (PyTorch)", alpha]];
      if (state.debiased) curves.push(["debiased", "debiased EMA", alpha]);
      if (state.cumulative) curves.push(["cumulative", "cumulative average", null]);

      // Curves: t = 0..steps for the EMA (it starts at 0), from t = 1 for the others.
      var n = Math.min(steps, 400), lo = Infinity, hi = -Infinity, series = [];
      var ts = [];
      for (var i = 0; i <= n; i++) ts.push(Math.round(i * steps / n));
      var population = ts.map(function (t) { return start + drift * t; });
      population.forEach(function (y) { lo = Math.min(lo, y); hi = Math.max(hi, y); });
      curves.forEach(function (c) {
        var pts = [];
        ts.forEach(function (t, k) {
          if (t === 0 && c[0] !== "ema") return;
          var b = t === 0 ? [start, 0] : band(c[0], c[2], m, drift, t, start);
          var y = population[k] - b[0];
          pts.push([t, y, b[1]]);
          lo = Math.min(lo, y - 2 * b[1]);
          hi = Math.max(hi, y + 2 * b[1]);
        });
        series.push({ kind: c[0], label: c[1], pts: pts });
      });
      if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
      var pad = 0.05 * (hi - lo);
      lo -= pad; hi += pad;
      function X(t) { return L + (W - L - R) * t / steps; }
      function Y(y) { return T + (H - T - B) * (hi - y) / (hi - lo); }

      layer.textContent = "";
      layer.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "emx-axis" }));
      layer.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, "class": "emx-axis" }));
      niceTicks(0, steps).forEach(function (tv) {
        var xl = svg("text", { x: X(tv), y: H - B + 16, "text-anchor": "middle", "class": "emx-tick" });
        xl.textContent = String(tv);
        layer.appendChild(xl);
      });
      niceTicks(lo, hi).forEach(function (yv) {
        var yl = svg("text", { x: L - 6, y: Y(yv) + 4, "text-anchor": "end", "class": "emx-tick" });
        yl.textContent = String(Number(yv.toPrecision(6)));
        layer.appendChild(yl);
        layer.appendChild(svg("line", { x1: L - 3, y1: Y(yv), x2: L, y2: Y(yv), "class": "emx-axis" }));
      });
      var xt = svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", "class": "emx-label" });
      xt.textContent = "optimiser steps t";
      layer.appendChild(xt);
      var yt = svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "class": "emx-label",
                             transform: "rotate(-90 14 " + (T + H - B) / 2 + ")" });
      yt.textContent = "mean (population sd)";
      layer.appendChild(yt);

      series.forEach(function (s) {
        [2, 1].forEach(function (z) {
          var upper = s.pts.map(function (p) { return X(p[0]) + "," + Y(p[1] + z * p[2]); });
          var lower = s.pts.slice().reverse().map(function (p) { return X(p[0]) + "," + Y(p[1] - z * p[2]); });
          layer.appendChild(svg("polygon", {
            points: upper.concat(lower).join(" "), fill: COLOURS[s.kind],
            "fill-opacity": z === 2 ? 0.12 : 0.22, stroke: "none"
          }));
        });
      });
      layer.appendChild(svg("polyline", {
        points: ts.map(function (t, k) { return X(t) + "," + Y(population[k]); }).join(" "),
        fill: "none", stroke: COLOURS.population, "stroke-width": 2, "stroke-dasharray": "6 4"
      }));
      series.forEach(function (s) {
        layer.appendChild(svg("polyline", {
          points: s.pts.map(function (p) { return X(p[0]) + "," + Y(p[1]); }).join(" "),
          fill: "none", stroke: COLOURS[s.kind], "stroke-width": 2,
          "stroke-dasharray": s.kind === "ema" ? "none" : (s.kind === "debiased" ? "2 3" : "10 3 2 3")
        }));
      });

      legend.textContent = "";
      [["population", "population mean (dashed)"]].concat(series.map(function (s) {
        return [s.kind, s.label + ": expected value, \u00b11 and \u00b12 sd of batch noise"];
      })).forEach(function (item) {
        var li = el("li", {});
        li.appendChild(el("span", { "class": "emx-swatch", style: "background-color:" + COLOURS[item[0]], "aria-hidden": "true" }));
        li.appendChild(document.createTextNode(item[1]));
        legend.appendChild(li);
      });

      var ema = band("ema", alpha, m, drift, steps, start);
      var sRms = steadyRms(alpha, m, drift);
      var meanAbs = Math.sqrt(2 / Math.PI) * sRms;
      var trusted = meanAbs <= data.s_star;
      title.textContent = "Running mean against the population mean, \u03b1 = " + plain(alpha) +
        ", drift " + plain(drift) + " sd per step, m = " + plain(m);
      desc.textContent = "After " + steps + " steps the expected distance below the population mean is " +
        fmt(ema[0]) + " population sd for the EMA (noise sd " + fmt(ema[1]) + ")" +
        series.slice(1).map(function (s) {
          var b = band(s.kind, alpha, m, drift, steps, start);
          return ", " + fmt(b[0]) + " for the " + s.label + " (noise sd " + fmt(b[1]) + ")";
        }).join("") + ".";

      readout.textContent = "";
      row("steps", "Steps shown", String(steps), "(five windows, at least 50, at most 2000)");
      row("window", "Effective window 1/\u03b1", fmt(1 / alpha), "steps");
      row("half_life", "Half-life ln 2 / (\u2212ln \u03c1)", fmt(alpha === 1 ? 0 : Math.LN2 / -Math.log1p(-alpha)), "steps");
      row("n_batches", "Effective number of batches (2 \u2212 \u03b1)/\u03b1", fmt((2 - alpha) / alpha),
          "(as noisy as the mean of this many batches)");
      row("startup", "Start-up bias \u03c1\u1d57 d\u2080 at step " + steps, fmt(Math.pow(1 - alpha, steps) * start),
          "sd (d\u2080 = " + plain(start) + ": PyTorch starts the running mean at 0)");
      row("lag", "Lag at a checkpoint, steady state, drift/\u03b1", fmt(drift / alpha), "sd");
      row("noise", "Noise sd, steady state, \u221a(\u03b1/((2 \u2212 \u03b1) m))", fmt(emaNoiseSd(alpha, m, Infinity)), "sd");
      row("ema_error", "EMA: expected error at step " + steps, fmt(ema[0]), "sd");
      row("ema_noise", "EMA: noise sd at step " + steps, fmt(ema[1]), "sd");
      if (state.debiased) {
        var d = band("debiased", alpha, m, drift, steps, start);
        row("debiased_error", "Debiased EMA: expected error at step " + steps, fmt(d[0]), "sd");
        row("debiased_noise", "Debiased EMA: noise sd at step " + steps, fmt(d[1]), "sd");
      }
      if (state.cumulative) {
        var c = band("cumulative", null, m, drift, steps, start);
        row("cumulative_error", "Cumulative average: expected error at step " + steps, fmt(c[0]), "sd");
        row("cumulative_noise", "Cumulative average: noise sd at step " + steps, fmt(c[1]), "sd");
      }
      row("s_rms", "Root-mean-square distance s_rms (steady state, checkpoint view)", fmt(sRms), "sd");
      row("mean_abs", "The rule's statistic \u221a(2/\u03c0) s_rms", fmt(meanAbs),
          "sd: the mean absolute distance when the noise dominates, up to \u221a(\u03c0/2) times less than it " +
          "when the lag does; against s* = " + plain(data.s_star) + ", calibrated at m = " +
          plain(data.s_star_batch_size) + " on chapter 7's two networks (" + plain(data.s_star_lo) + " to " +
          plain(data.s_star_hi) + " over resampled seeds)");
      var startup = Math.pow(1 - alpha, steps) * start;
      var now = Math.sqrt(2 / Math.PI) * Math.hypot(ema[0], ema[1]), settled = now <= data.s_star;
      var systematic = Math.abs(ema[0]), noise = ema[1];
      var which = systematic >= 2 * noise
        ? (Math.abs(startup) > Math.abs(ema[0] - startup) ? "the start-up bias dominates" : "the lag dominates")
        : noise >= 2 * systematic ? "the batch noise dominates" : "start-up bias and lag together are comparable to the noise";
      takeaway.textContent = "After " + steps + " steps the EMA is off by " + fmt(ema[0]) + " \u00b1 " + fmt(ema[1]) +
        " population sd: " + which + ".";
      var where = m === data.s_star_batch_size ? "" : " (an extrapolation: s* was calibrated at m = " + plain(data.s_star_batch_size) + ")";
      verdict.textContent = trusted
        ? "The rule: trust EMA-tracked accuracy at these settings once the start-up bias has faded (\u221a(2/\u03c0) s_rms \u2264 s*)" + where + "." +
          (settled ? "" : " After the " + steps + " steps shown the EMA is not there yet: the same statistic at that step is " +
                          fmt(now) + " sd, above s*; wait, or use the debiased EMA.")
        : "The rule: do not trust EMA-tracked accuracy at these settings (\u221a(2/\u03c0) s_rms > s*)" + where +
          "; recalibrate before reading it.";
      verdict.setAttribute("data-settled", settled ? "true" : "false");
      verdict.setAttribute("data-trusted", trusted ? "true" : "false");
      verdict.className = "emx-verdict " + (trusted ? "emx-trusted" : "emx-untrusted");
    }

    update();
    // The static figure and table below are for print and for readers without JavaScript.
    document.querySelectorAll(".tag_ema-explorer-fallback, .ema-explorer-print").forEach(function (node) {
      node.hidden = true;
    });
    root.setAttribute("data-ready", "true");
  }

  function init() {
    var root = document.getElementById("ema-explorer-figure");
    if (!root || !window.emaExplorerData) return;
    build(root, window.emaExplorerData);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
