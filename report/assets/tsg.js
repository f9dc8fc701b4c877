/* Time-sequence graphs (report/tsg.py writes the data): draws each <figure class="tsg">
   from its JSON block into its <svg>, with zoom, pan and hover. Inline in the page, no
   library, no network. Every redraw maps the data (kept in JavaScript numbers: exact for
   byte offsets and microseconds) to pixels again, so deep zooms stay sharp. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var M = { l: 74, r: 12, t: 10, b: 38 };

  function undelta(a) {
    var out = new Array(a.length), s = 0;
    for (var i = 0; i < a.length; i++) { s += a[i]; out[i] = s; }
    return out;
  }
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function niceStep(span, n) {
    var raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return p * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
  }
  function fmtBytes(v, step) {
    var a = Math.abs(step), u = [[1e9, " GB"], [1e6, " MB"], [1e3, " KB"]];
    for (var i = 0; i < u.length; i++) {
      if (a >= u[i][0] / 10 && Math.abs(v) >= u[i][0]) {
        var d = Math.max(0, -Math.floor(Math.log10(a / u[i][0]) + 1e-9));
        return (v / u[i][0]).toFixed(Math.min(d, 6)) + u[i][1];
      }
    }
    return String(Math.round(v));
  }
  function fmtTime(us, step) {
    var d = Math.max(0, -Math.floor(Math.log10(step / 1e6) + 1e-9));
    if (step < 1e3) return (us / 1e3).toFixed(Math.max(0, d - 3)) + " ms";
    return (us / 1e6).toFixed(Math.min(d, 6)) + " s";
  }
  function fmtMs(us) { return (us / 1e3).toFixed(us < 1e4 ? 3 : 1) + " ms"; }

  function Graph(fig) {
    var data = JSON.parse(fig.querySelector("script.tsg-data").textContent);
    this.fig = fig;
    this.svg = fig.querySelector("svg.tsg-plot");
    this.tip = fig.querySelector(".tsg-tip");
    this.d = {
      ot: undelta(data.orig.t), os: undelta(data.orig.s), ol: data.orig.l,
      at: undelta(data.ack.t), aa: undelta(data.ack.a),
      aw: data.ack.w ? undelta(data.ack.w) : null,
      st: undelta(data.sack.t), sl: data.sack.l, sr: data.sack.r, sd: data.sack.d,
      rt: data.rtx.t, rs: data.rtx.s, re: data.rtx.e, rk: data.rtx.k, rsp: data.rtx.sp,
      rf: data.rtx.frame, why: data.rtx.why, cause: data.rtx.cause || [],
      timer: data.rtx.timer,
      kinds: data.kinds, colors: data.colors, sampled: data.sampled
    };
    this.build();
    this.full = this.extent();
    this.view = this.full.slice();
    this.bind();
    this.draw();
  }

  Graph.prototype.extent = function () {
    var d = this.d, x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, i;
    function t(v) { if (v < x0) x0 = v; if (v > x1) x1 = v; }
    function s(v) { if (v < y0) y0 = v; if (v > y1) y1 = v; }
    for (i = 0; i < d.ot.length; i++) { t(d.ot[i]); s(d.os[i]); s(d.os[i] + d.ol[i]); }
    for (i = 0; i < d.rt.length; i++) { t(d.rt[i]); s(d.rs[i]); s(d.re[i]); }
    for (i = 0; i < d.at.length; i++) { t(d.at[i]); s(d.aa[i]); }
    if (!isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    // the window edge joins the view when it is near the data; far above (an idle flow
    // with a large window), it would flatten everything: the graph says so instead
    var wmax = -Infinity;
    if (d.aw) for (i = 0; i < d.aw.length; i++) if (d.aw[i] > wmax) wmax = d.aw[i];
    this.rwndAbove = false;
    this.wmax = wmax;
    if (isFinite(wmax) && wmax > y1) {
      if (wmax - y0 <= 1.5 * (y1 - y0)) y1 = wmax; else this.rwndAbove = true;
    }
    var px = Math.max((x1 - x0) * 0.02, 1), py = Math.max((y1 - y0) * 0.04, 1);
    return [x0 - px, x1 + px, y0 - py, y1 + py];
  };

  Graph.prototype.build = function () {
    var svg = this.svg, id = this.fig.id;
    this.W = parseFloat(svg.getAttribute("width"));
    this.H = parseFloat(svg.getAttribute("height"));
    svg.setAttribute("viewBox", "0 0 " + this.W + " " + this.H);
    var defs = el("defs", {}, svg);
    var cp = el("clipPath", { id: id + "-clip" }, defs);
    el("rect", { x: M.l, y: M.t, width: this.W - M.l - M.r, height: this.H - M.t - M.b }, cp);
    this.bg = el("rect", { x: M.l, y: M.t, width: this.W - M.l - M.r,
      height: this.H - M.t - M.b, "class": "bg" }, svg);
    this.gAxes = el("g", { "class": "axes" }, svg);
    var plot = el("g", { "clip-path": "url(#" + id + "-clip)" }, svg);
    this.pRwnd = el("path", { "class": "rwnd" }, plot);
    this.pAck = el("path", { "class": "ack" }, plot);
    this.pSack = el("path", { "class": "sack" }, plot);
    this.pDsack = el("path", { "class": "dsack" }, plot);
    this.pOrig = el("path", { "class": "orig" }, plot);
    this.pPto = el("path", { "class": "timer pto" }, plot);
    this.pRto = el("path", { "class": "timer rto" }, plot);
    var gr = el("g", { "class": "marks" }, plot);
    this.marks = [];
    for (var i = 0; i < this.d.rt.length; i++) {
      var kind = this.d.kinds[this.d.rk[i]], c = this.d.colors[kind] || "#999";
      var sp = this.d.rsp[i];
      var m = el("path", { "class": "rtx k-" + kind + (sp === 1 ? " spurious" : ""),
        "data-i": i, stroke: c, fill: sp === 1 ? "#fff" : c }, gr);
      this.marks.push(m);
    }
    this.gTop = el("g", { "class": "overlay" }, svg);
    this.box = el("rect", { "class": "zoombox", visibility: "hidden" }, svg);
  };

  Graph.prototype.sx = function (t) {
    var v = this.view;
    return M.l + (t - v[0]) / (v[1] - v[0]) * (this.W - M.l - M.r);
  };
  Graph.prototype.sy = function (s) {
    var v = this.view, ph = this.H - M.t - M.b;
    return M.t + ph - (s - v[2]) / (v[3] - v[2]) * ph;
  };
  Graph.prototype.tx = function (px) {
    var v = this.view;
    return v[0] + (px - M.l) / (this.W - M.l - M.r) * (v[1] - v[0]);
  };
  Graph.prototype.ty = function (py) {
    var v = this.view, ph = this.H - M.t - M.b;
    return v[2] + (M.t + ph - py) / ph * (v[3] - v[2]);
  };

  Graph.prototype.draw = function () {
    var d = this.d, v = this.view, self = this, i, x, parts;
    var lo = v[0] - (v[1] - v[0]) * 0.05, hi = v[1] + (v[1] - v[0]) * 0.05;
    function visible(t) { return t >= lo && t <= hi; }
    function f(n) { return n.toFixed(1); }
    function clampY(y) { return Math.max(-1e5, Math.min(1e5, y)); }
    // originals: one vertical bar per segment, from its first to its last byte
    parts = [];
    for (i = 0; i < d.ot.length; i++) {
      if (!visible(d.ot[i])) continue;
      x = this.sx(d.ot[i]);
      var y0 = clampY(this.sy(d.os[i])), y1 = clampY(this.sy(d.os[i] + d.ol[i]));
      if (y0 - y1 < 1.5) y1 = y0 - 1.5;
      parts.push("M" + f(x) + " " + f(y0) + "V" + f(y1));
    }
    this.pOrig.setAttribute("d", parts.join(""));
    // ACK line and receive window edge: steps, drawn through the whole view
    function steps(ts, ys) {
      var out = [], started = false;
      for (var j = 0; j < ts.length; j++) {
        var xj = self.sx(ts[j]), yj = clampY(self.sy(ys[j]));
        if (j + 1 < ts.length && ts[j + 1] < lo) continue;
        if (!started) { out.push("M" + f(xj) + " " + f(yj)); started = true; }
        else out.push("H" + f(xj) + "V" + f(yj));
        if (ts[j] > hi) break;
      }
      if (started && ts.length) out.push("H" + f(self.sx(Math.max(hi, ts[ts.length - 1]))));
      return out.join("");
    }
    this.pAck.setAttribute("d", steps(d.at, d.aa));
    this.pRwnd.setAttribute("d", d.aw ? steps(d.at, d.aw) : "");
    // SACK blocks: a bar at the ACK's time over the block's bytes
    var sp = [], dp = [];
    for (i = 0; i < d.st.length; i++) {
      if (!visible(d.st[i])) continue;
      x = this.sx(d.st[i]) + 1.5;
      (d.sd[i] ? dp : sp).push("M" + f(x) + " " + f(clampY(this.sy(d.sl[i]))) + "V" +
        f(clampY(this.sy(d.sr[i]))));
    }
    this.pSack.setAttribute("d", sp.join(""));
    this.pDsack.setAttribute("d", dp.join(""));
    // timers: a dashed line from when the timer was armed to its deadline, at the
    // retransmission's height, with a tick at the deadline
    var pto = [], rto = [];
    for (i = 0; i < d.rt.length; i++) {
      var tm = d.timer[i];
      if (!tm) continue;
      var y = f(clampY(this.sy(d.re[i])));
      var xa = this.sx(tm[0]), xd = this.sx(tm[1]);
      (tm[2] === "pto" ? pto : rto).push("M" + f(xa) + " " + y + "H" + f(xd) + "M" + f(xd) +
        " " + f(parseFloat(y) - 6) + "v12");
    }
    this.pPto.setAttribute("d", pto.join(""));
    this.pRto.setAttribute("d", rto.join(""));
    // retransmissions: every one, a bar over its bytes and a dot at its end (smaller
    // dots when there are many)
    var rad = d.rt.length > 300 ? 2.5 : 4, arc = "a" + rad + " " + rad + " 0 1 0 ";
    for (i = 0; i < d.rt.length; i++) {
      x = this.sx(d.rt[i]);
      var ya = clampY(this.sy(d.rs[i])), yb = clampY(this.sy(d.re[i]));
      this.marks[i].setAttribute("d", "M" + f(x) + " " + f(ya) + "V" + f(yb) + "M" +
        f(x - rad) + " " + f(yb) + arc + 2 * rad + " 0" + arc + -2 * rad + " 0");
    }
    this.axes();
  };

  Graph.prototype.axes = function () {
    var g = this.gAxes, v = this.view, W = this.W, H = this.H, t, x, y;
    while (g.firstChild) g.removeChild(g.firstChild);
    while (this.gTop.firstChild) this.gTop.removeChild(this.gTop.firstChild);
    el("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b,
      "class": "frame" }, g);
    var xs = niceStep(v[1] - v[0], 8);
    for (t = Math.ceil(v[0] / xs) * xs; t <= v[1]; t += xs) {
      x = this.sx(t);
      el("line", { x1: x, x2: x, y1: M.t, y2: H - M.b, "class": "grid" }, g);
      el("text", { x: x, y: H - M.b + 14, "text-anchor": "middle" }, g).textContent =
        fmtTime(t, xs);
    }
    var ys = niceStep(v[3] - v[2], 7);
    for (t = Math.ceil(v[2] / ys) * ys; t <= v[3]; t += ys) {
      y = this.sy(t);
      el("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, "class": "grid" }, g);
      el("text", { x: M.l - 4, y: y + 4, "text-anchor": "end" }, g).textContent =
        fmtBytes(t, ys);
    }
    if (this.d.sampled) {
      el("text", { x: M.l + 6, y: M.t + 14, "class": "lab" }, this.gTop).textContent =
        "originals and ACKs sampled, every retransmission drawn (see the note below)";
    }
    if (this.rwndAbove && this.sy(this.wmax) < M.t) {
      el("text", { x: W - M.r - 6, y: M.t + 14, "text-anchor": "end", "class": "lab" },
        this.gTop)
        .textContent = "the receive window edge goes above the view: zoom out to see it";
    }
    el("text", { x: M.l + (W - M.l - M.r) / 2, y: H - 4, "text-anchor": "middle",
      "class": "lab" }, g).textContent = "time since the connection's first packet";
    el("text", { x: 12, y: M.t + (H - M.t - M.b) / 2, "text-anchor": "middle",
      transform: "rotate(-90 12 " + (M.t + (H - M.t - M.b) / 2) + ")", "class": "lab" },
      g).textContent = "sequence offset (bytes)";
  };

  Graph.prototype.schedule = function () {
    var self = this;
    if (this.pending) return;
    this.pending = true;
    window.requestAnimationFrame(function () { self.pending = false; self.draw(); });
  };

  Graph.prototype.point = function (ev) {
    var r = this.svg.getBoundingClientRect();
    return [(ev.clientX - r.left) * this.W / r.width, (ev.clientY - r.top) * this.H / r.height];
  };

  Graph.prototype.zoom = function (px, py, fx, fy) {
    var v = this.view, t = this.tx(px), s = this.ty(py);
    this.view = [t - (t - v[0]) * fx, t + (v[1] - t) * fx, s - (s - v[2]) * fy,
      s + (v[3] - s) * fy];
    this.schedule();
  };

  Graph.prototype.bind = function () {
    var self = this, svg = this.svg, drag = null;
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = self.point(ev), f = Math.exp(Math.max(-1, Math.min(1, ev.deltaY * 0.002)));
      self.zoom(p[0], p[1], ev.altKey ? 1 : f, ev.shiftKey ? 1 : f);
    }, { passive: false });
    svg.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      var p = self.point(ev);
      drag = { x: p[0], y: p[1], view: self.view.slice(), box: ev.shiftKey };
      svg.setPointerCapture(ev.pointerId);
    });
    svg.addEventListener("pointermove", function (ev) {
      if (!drag) return;
      var p = self.point(ev);
      if (drag.box) {
        self.box.setAttribute("x", Math.min(p[0], drag.x));
        self.box.setAttribute("y", Math.min(p[1], drag.y));
        self.box.setAttribute("width", Math.abs(p[0] - drag.x));
        self.box.setAttribute("height", Math.abs(p[1] - drag.y));
        self.box.setAttribute("visibility", "visible");
        return;
      }
      var v = drag.view, pw = self.W - M.l - M.r, ph = self.H - M.t - M.b;
      var dt = (p[0] - drag.x) / pw * (v[1] - v[0]), ds = (p[1] - drag.y) / ph * (v[3] - v[2]);
      self.view = [v[0] - dt, v[1] - dt, v[2] + ds, v[3] + ds];
      self.schedule();
    });
    svg.addEventListener("pointerup", function (ev) {
      if (drag && drag.box) {
        var p = self.point(ev);
        self.box.setAttribute("visibility", "hidden");
        if (Math.abs(p[0] - drag.x) > 4 && Math.abs(p[1] - drag.y) > 4) {
          var a = [self.tx(Math.min(p[0], drag.x)), self.tx(Math.max(p[0], drag.x)),
            self.ty(Math.max(p[1], drag.y)), self.ty(Math.min(p[1], drag.y))];
          self.view = a;
          self.schedule();
        }
      }
      drag = null;
    });
    svg.addEventListener("dblclick", function () { self.reset(); });
    var btn = this.fig.querySelector(".tsg-reset");
    if (btn) btn.addEventListener("click", function () { self.reset(); });
    this.marks.forEach(function (m) {
      m.addEventListener("pointerenter", function (ev) { self.hover(m, ev); });
      m.addEventListener("pointerleave", function () {
        self.tip.hidden = true;
        m.classList.remove("hot");
      });
    });
  };

  Graph.prototype.reset = function () {
    this.view = this.full.slice();
    this.schedule();
  };

  Graph.prototype.hover = function (m, ev) {
    var d = this.d, i = +m.getAttribute("data-i"), tip = this.tip;
    var kind = d.kinds[d.rk[i]];
    m.classList.add("hot");
    var cause = d.cause[i] && d.cause[i] !== kind ? " (" + d.cause[i] + ")" : "";
    var head = kind + cause + (d.rsp[i] === 1 ? ", spurious" : "") + " at +" + fmtMs(d.rt[i]) +
      ", bytes " + d.rs[i] + "–" + d.re[i] + (d.rf[i] >= 0 ? ", frame " + d.rf[i] : "");
    tip.textContent = "";
    var b = document.createElement("b");
    b.textContent = head;
    tip.appendChild(b);
    tip.appendChild(document.createElement("br"));
    tip.appendChild(document.createTextNode(d.why[i]));
    var tm = d.timer[i];
    if (tm) {
      tip.appendChild(document.createElement("br"));
      tip.appendChild(document.createTextNode(tm[2].toUpperCase() + " armed at +" +
        fmtMs(tm[0]) + ", deadline +" + fmtMs(tm[1]) + ", fired +" + fmtMs(d.rt[i])));
    }
    tip.hidden = false;
    var wrap = tip.parentNode.getBoundingClientRect(), r = m.getBoundingClientRect();
    var left = r.right - wrap.left + 8, top = r.top - wrap.top - 8;
    if (left + 360 > wrap.width) left = Math.max(0, r.left - wrap.left - 368);
    tip.style.left = left + "px";
    tip.style.top = Math.max(0, top) + "px";
  };

  function init() {
    var figs = document.querySelectorAll("figure.tsg");
    for (var i = 0; i < figs.length; i++) {
      try { figs[i].tsg = new Graph(figs[i]); }
      catch (e) {
        var p = document.createElement("p");
        p.className = "warn";
        p.textContent = "This graph could not be drawn: " + e;
        figs[i].appendChild(p);
      }
    }
    document.documentElement.setAttribute("data-tsg-ready", String(figs.length));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
