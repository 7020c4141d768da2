/* spatialreward report: renders the edits table one page at a time.
   Record text is only ever set with textContent, never parsed as HTML. */
(function () {
  "use strict";
  var t0 = performance.now();
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var images = JSON.parse(document.getElementById("report-images").textContent);
  var COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
                "#0aa1a8", "#d4a017", "#f032e6", "#6b8e23", "#8b4513"];
  var FRAME = 160;       // px, the longest side of a thumbnail frame
  var SOURCE_FRAME = 160;
  // The numeric columns (edit records: reward, overall, SC, PQ, the four raw
  // scores; text-to-image records: reward, spatial, presence, verified).
  var COLUMNS = data.columns || [];
  var NCOLS = 3 + COLUMNS.length;
  var GETTERS = {};
  COLUMNS.forEach(function (c) {
    GETTERS[c.key] = c.i != null ? function (r) { var v = r[c.f]; return v ? v[c.i] : undefined; }
                                 : function (r) { return r[c.f]; };
  });

  // Units: a single record or a group, members in rank order (best first).
  var units = data.units.map(function (members, i) {
    return { m: members, o: i, id: members[0].g != null ? members[0].g : members[0].id };
  });

  var state = { sort: "reward", dir: 1, status: "all", cat: "", q: "", page: 0, size: 50 };
  var view = [];
  window.__report = { renders: 0, ready: null, painted: null, lastRenderMs: null, lastSortMs: null,
                     lastSortPaintMs: null, rows: units.length };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function fmt(v, digits) {
    if (v == null) return "–";
    return digits === 1 && Number.isInteger(v) ? String(v) : v.toFixed(digits);
  }

  function basename(p) {
    if (!p) return "";
    var parts = String(p).split(/[\\/]/);
    return parts[parts.length - 1];
  }

  // -- filtering and sorting --------------------------------------------------

  function matches(r) {
    if (state.status !== "all" && r.st !== state.status) return false;
    if (state.cat && r.cat !== state.cat) return false;
    if (state.q) {
      var q = state.q;
      var hay = (r.id + "\n" + r.ins + "\n" + (r.g || "") + "\n" + (r.em || "") + "\n" +
                 (r.b ? r.b.map(function (b) { return b[5]; }).join("\n") : "") + "\n" +
                 (r.ab ? r.ab.join("\n") : "") + "\n" +
                 (r.rl ? r.rl.map(function (x) { return x.slice(0, 3).join(" "); }).join("\n") : "")).toLowerCase();
      if (hay.indexOf(q) < 0) return false;
    }
    return true;
  }

  function sortValue(u) {
    if (state.sort === "id") return u.id;
    var v = GETTERS[state.sort](u.v[0]);
    return v == null ? -Infinity : v;  // no score (error) sorts below every score
  }

  function compare(a, b) {
    var va = a.k, vb = b.k, c = 0;
    if (state.sort === "id") c = va < vb ? -1 : va > vb ? 1 : 0;
    else if (va !== vb) c = va < vb ? -1 : 1;
    return c !== 0 ? c * state.dir : a.u.o - b.u.o;
  }

  function recompute() {
    var filtering = state.status !== "all" || state.cat || state.q;
    view = [];
    for (var i = 0; i < units.length; i++) {
      var u = units[i];
      var members = filtering ? u.m.filter(matches) : u.m;
      if (members.length) view.push({ u: u, v: members, k: null });
    }
    for (var j = 0; j < view.length; j++) view[j].k = sortValue({ id: view[j].u.id, v: view[j].v });
    view.sort(compare);
  }

  // -- rendering ---------------------------------------------------------------

  function frameSize(w, h, side) {
    if (!(w > 0 && h > 0)) { w = 4; h = 3; }
    return w >= h ? [side, Math.max(1, Math.round(side * h / w))] : [Math.max(1, Math.round(side * w / h)), side];
  }

  function frame(key, path, aspect, side, role) {
    // key: undefined = beyond --images, null = no path, else an image key
    var img = key ? images[key] : null;
    var w = aspect && aspect[0], h = aspect && aspect[1];
    if (!(w > 0 && h > 0) && img && img.u) { w = img.w; h = img.h; }
    var size = frameSize(w, h, side);
    var f = el("div", "frame " + role);
    f.style.width = size[0] + "px";
    f.style.height = size[1] + "px";
    if (path) f.title = role + ": " + path;
    if (img && img.u) {
      var im = el("img");
      im.alt = role + " " + basename(path);
      im.decoding = "async";
      im.src = img.u;
      f.appendChild(im);
    } else {
      var text = key === undefined ? "no thumbnail (raise --images)" : key === null ? "no image path" :
        "image unavailable";
      var ph = el("div", "ph" + (img && img.x ? " missing" : ""), text);
      if (img && img.x) ph.appendChild(el("small", null, img.x));
      f.appendChild(ph);
    }
    return f;
  }

  function regionColor(r, id) {
    if (!r.b) return null;
    for (var i = 0; i < r.b.length; i++) if (r.b[i][4] === id) return COLORS[i % COLORS.length];
    return null;
  }

  function sourceFigures(r) {
    // r.sp: one path, or a list of paths (several sources, in order); r.si the same shape
    if (!Array.isArray(r.sp)) {
      var one = el("figure", "thumb");
      one.appendChild(frame(r.si, r.sp, null, SOURCE_FRAME, "source"));
      one.appendChild(el("figcaption", null, basename(r.sp)));
      return one;
    }
    var box = el("div", "sources");
    var side = Math.max(48, Math.round(SOURCE_FRAME / Math.min(r.sp.length, 2)));
    r.sp.forEach(function (path, i) {
      var fig = el("figure", "thumb");
      var key = Array.isArray(r.si) ? r.si[i] : undefined;
      var f = frame(key, path, null, side, "source " + (i + 1));
      f.className = "frame source";
      fig.appendChild(f);
      fig.appendChild(el("figcaption", null, (i + 1) + ". " + basename(path)));
      fig.style.maxWidth = side + "px";
      box.appendChild(fig);
    });
    return box;
  }

  function imagesCell(r) {
    var t2i = r.k === "t2i";
    var td = el("td", "imgs");
    var pair = el("div", "pair");
    var src = t2i ? null : sourceFigures(r);
    var edt = el("figure", "thumb");
    var f = frame(r.ei, r.ep, r.sz, FRAME, t2i ? "image" : "edited");
    (r.b || []).forEach(function (b, i) {
      var color = COLORS[i % COLORS.length];
      var box = el("div", "box");
      box.style.left = (b[0] / 10) + "%";
      box.style.top = (b[1] / 10) + "%";
      box.style.width = ((b[2] - b[0]) / 10) + "%";
      box.style.height = ((b[3] - b[1]) / 10) + "%";
      box.style.borderColor = color;
      box.title = b[4] + ": " + b[5];
      var tag = el("span", "boxnum" + (t2i ? " boxlabel" : ""), t2i ? b[5] : String(b[4]));
      tag.style.background = color;
      box.appendChild(tag);
      f.appendChild(box);
    });
    edt.appendChild(f);
    edt.appendChild(el("figcaption", null, basename(r.ep)));
    if (src) {
      pair.appendChild(src);
      pair.appendChild(el("span", "arrow-sep", "→"));
    }
    pair.appendChild(edt);
    td.appendChild(pair);
    if (r.b && r.b.length) {
      var legend = el("ol", "legend");
      r.b.forEach(function (b, i) {
        var li = el("li");
        var badge = el("span", "badge", String(b[4]));
        badge.style.background = COLORS[i % COLORS.length];
        li.appendChild(badge);
        li.appendChild(document.createTextNode(" " + b[5]));
        li.title = b[5] + " [" + b.slice(0, 4).join(", ") + "]";
        legend.appendChild(li);
      });
      td.appendChild(legend);
    } else if (r.st === "ok") {
      td.appendChild(el("p", "legend none", t2i ? "no object found" : "no edit region predicted"));
    }
    if (r.ab && r.ab.length) td.appendChild(el("p", "legend absent", "not found: " + r.ab.join(", ")));
    return td;
  }

  function verdictCell(v) {
    return el("td", "v " + (v === true ? "yes" : v === false ? "no" : "unknown"),
              v === true ? "yes" : v === false ? "no" : "–");
  }

  // A text-to-image record's relations: the model's and the geometry's verdicts.
  function relationsTable(r) {
    var table = el("table", "rels");
    var head = el("tr");
    ["subject", "relation", "object", "model", "geometry", "agree", "decided by"].forEach(function (h) {
      head.appendChild(el("th", null, h));
    });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = el("tbody");
    r.rl.forEach(function (x) {
      var tr = el("tr", "rel");
      tr.appendChild(el("td", "subj", x[0]));
      tr.appendChild(el("td", "relname", x[1]));
      tr.appendChild(el("td", "obj", x[2]));
      tr.appendChild(verdictCell(x[3]));
      tr.appendChild(verdictCell(x[4]));
      tr.appendChild(verdictCell(x[5]));
      tr.appendChild(el("td", "by " + x[6], x[6]));
      body.appendChild(tr);
    });
    table.appendChild(body);
    return table;
  }

  var MARKER = /<\|bbox_(\d+)\|>|<\|global\|>/g;

  var PREVIEW = 260;  // characters of reasoning shown before "more" (long texts cost layout time)

  // Text with <|bbox_N|> markers as coloured badges and <|global|> as "Overall:",
  // up to `limit` characters of text; returns true when it stopped short.
  function fillReasoning(box, r, text, limit) {
    var last = 0, used = 0, m;
    function addText(t) {
      if (used + t.length > limit) {
        var cut = t.slice(0, Math.max(0, limit - used));
        var space = cut.lastIndexOf(" ");
        box.appendChild(document.createTextNode((space > cut.length - 30 ? cut.slice(0, space) : cut) + "… "));
        return false;
      }
      box.appendChild(document.createTextNode(t));
      used += t.length;
      return true;
    }
    MARKER.lastIndex = 0;
    while ((m = MARKER.exec(text)) !== null) {
      if (m.index > last && !addText(text.slice(last, m.index))) return true;
      if (m[1] !== undefined) {
        var badge = el("span", "badge", m[1]);
        var color = regionColor(r, parseInt(m[1], 10));
        if (color) badge.style.background = color; else badge.classList.add("orphan");
        badge.title = "region " + m[1];
        box.appendChild(badge);
      } else {
        box.appendChild(el("b", "global", "Overall:"));
      }
      last = MARKER.lastIndex;
    }
    return last < text.length && !addText(text.slice(last));
  }

  function reasoning(r, label, text) {
    var p = el("div", "why");
    p.appendChild(el("span", "why-label", label));
    var body = el("span", "why-text");
    p.appendChild(body);
    if (fillReasoning(body, r, text, PREVIEW)) {
      var more = el("button", "more", "more");
      more.type = "button";
      more.addEventListener("click", function () {
        var open = more.textContent === "more";
        body.textContent = "";
        fillReasoning(body, r, text, open ? Infinity : PREVIEW);
        more.textContent = open ? "less" : "more";
      });
      p.appendChild(more);
    }
    return p;
  }

  function editCell(r) {
    var td = el("td", "edit");
    var head = el("div", "edit-head");
    head.appendChild(el("span", "rid mono", r.id));
    if (r.g != null) head.appendChild(el("span", "chip rank", r.rk != null ? "rank " + r.rk : "unranked"));
    if (r.cat != null) head.appendChild(el("span", "chip cat", r.cat));
    if (r.rep) head.appendChild(el("span", "chip rep", "repaired"));
    if (r.k === "t2i" && data.kind !== "t2i") head.appendChild(el("span", "chip kind", "t2i"));
    head.appendChild(el("span", "chip status " + (r.st === "ok" ? "ok" : "err"), r.st));
    td.appendChild(head);
    td.appendChild(el("p", "ins", r.ins || (r.k === "t2i" ? "(no prompt)" : "(no instruction)")));
    if (r.st !== "ok") {
      var box = el("div", "error-box");
      box.appendChild(el("span", "stage", r.es));
      box.appendChild(el("span", "msg", r.em));
      if (r.eo) box.appendChild(el("span", "origin mono", r.eo));
      td.appendChild(box);
    }
    if (r.rl) {
      if (r.rl.length) td.appendChild(relationsTable(r));
      else td.appendChild(el("p", "legend none", "no relation stated"));
    }
    if (r.rs) td.appendChild(reasoning(r, "SC", r.rs));
    if (r.rp) td.appendChild(reasoning(r, "PQ", r.rp));
    if (r.rt) td.appendChild(reasoning(r, "T2I", r.rt));
    return td;
  }

  function numCell(v, digits, cls) {
    var td = el("td", "num" + (cls ? " " + cls : ""), fmt(v, digits));
    if (v != null) td.dataset.value = v;
    return td;
  }

  function recordRow(r, position) {
    var tr = el("tr", "rec " + (r.st === "ok" ? "ok" : "err"));
    tr.dataset.id = r.id;
    tr.appendChild(el("td", "pos", position));
    tr.appendChild(imagesCell(r));
    tr.appendChild(editCell(r));
    var pass = r.r != null ? (r.r >= data.threshold ? "pass" : "fail") : "";
    COLUMNS.forEach(function (c) {
      var cls = c.key === "reward" ? "reward " + pass : (c.raw ? "raw " : "") + c.key;
      tr.appendChild(numCell(GETTERS[c.key](r), c.digits, cls));
    });
    return tr;
  }

  function unitBody(item, index) {
    var tb = el("tbody", "unit" + (item.u.m[0].g != null ? " group" : ""));
    tb.dataset.key = item.k === -Infinity ? "" : item.k;
    var r0 = item.v[0];
    if (r0.g != null) {
      var head = el("tr", "group-head");
      var td = el("td", null);
      td.colSpan = NCOLS;
      td.appendChild(el("span", "g-label", "group "));
      td.appendChild(el("span", "mono", r0.g));
      var all = item.u.m, ok = all.filter(function (r) { return r.st === "ok"; });
      var text = " · " + all.length + " candidate" + (all.length === 1 ? "" : "s") +
        (r0.gs != null && r0.gs !== all.length ? " (of " + r0.gs + ")" : "") +
        ", best first" + (ok.length ? " · best reward " + fmt(ok[0].r, 3) : " · none judged") +
        (item.v.length < all.length ? " · " + item.v.length + " shown by the filters" : "");
      td.appendChild(document.createTextNode(text));
      head.appendChild(td);
      tb.appendChild(head);
    }
    item.v.forEach(function (r, i) { tb.appendChild(recordRow(r, i === 0 ? String(index + 1) : "")); });
    return tb;
  }

  function pagerInto(box, pages) {
    box.textContent = "";
    var start = view.length ? state.page * state.size + 1 : 0;
    var end = Math.min(view.length, (state.page + 1) * state.size);
    var prev = el("button", "prev", "‹ Prev");
    prev.type = "button";
    prev.disabled = state.page <= 0;
    prev.addEventListener("click", function () { go(state.page - 1); });
    var next = el("button", "next", "Next ›");
    next.type = "button";
    next.disabled = state.page >= pages - 1;
    next.addEventListener("click", function () { go(state.page + 1); });
    var info = el("span", "info",
      "rows " + start + "–" + end + " of " + view.length +
      (view.length !== units.length ? " (filtered from " + units.length + ")" : "") +
      " · page " + (pages ? state.page + 1 : 0) + " of " + pages);
    box.appendChild(prev);
    box.appendChild(info);
    box.appendChild(next);
  }

  function go(page) {
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(Math.max(0, page), pages - 1);
    render();
    document.getElementById("edits").scrollIntoView({ block: "start" });
  }

  function render() {
    var t = performance.now();
    var table = document.getElementById("edits");
    var old = table.querySelectorAll("tbody");
    for (var i = 0; i < old.length; i++) table.removeChild(old[i]);
    var frag = document.createDocumentFragment();
    var start = state.page * state.size;
    var slice = view.slice(start, start + state.size);
    slice.forEach(function (item, i) { frag.appendChild(unitBody(item, start + i)); });
    table.appendChild(frag);
    document.getElementById("empty").hidden = view.length > 0;
    var pages = Math.ceil(view.length / state.size);
    pagerInto(document.getElementById("pager-top"), pages);
    pagerInto(document.getElementById("pager-bottom"), pages);
    var ths = document.querySelectorAll("th.sortable");
    for (var j = 0; j < ths.length; j++) {
      var th = ths[j], active = th.dataset.sort === state.sort;
      th.classList.toggle("active", active);
      th.setAttribute("aria-sort", active ? (state.dir > 0 ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = active ? (state.dir > 0 ? "▲" : "▼") : "";
    }
    window.__report.renders += 1;
    window.__report.lastRenderMs = performance.now() - t;
  }

  function afterPaint(callback) {  // runs once the next frame is laid out and painted
    requestAnimationFrame(function () { setTimeout(callback, 0); });
  }

  // -- controls ----------------------------------------------------------------

  function refresh() {
    recompute();
    state.page = 0;
    render();
  }

  var ths = document.querySelectorAll("th.sortable");
  for (var i = 0; i < ths.length; i++) {
    ths[i].addEventListener("click", function (ev) {
      var t = performance.now();
      var col = ev.currentTarget.dataset.sort;
      if (col === state.sort) state.dir = -state.dir;
      else { state.sort = col; state.dir = 1; }
      refresh();
      window.__report.lastSortMs = performance.now() - t;
      afterPaint(function () { window.__report.lastSortPaintMs = performance.now() - t; });
    });
  }

  var cats = {};
  units.forEach(function (u) { u.m.forEach(function (r) { if (r.cat != null) cats[r.cat] = true; }); });
  var catSelect = document.getElementById("f-cat");
  Object.keys(cats).sort().forEach(function (c) {
    var o = el("option", null, c);
    o.value = c;
    catSelect.appendChild(o);
  });
  if (!Object.keys(cats).length) catSelect.closest("label").hidden = true;

  document.getElementById("f-status").addEventListener("change", function (ev) { state.status = ev.target.value; refresh(); });
  catSelect.addEventListener("change", function (ev) { state.cat = ev.target.value; refresh(); });
  document.getElementById("f-size").addEventListener("change", function (ev) {
    state.size = parseInt(ev.target.value, 10) || 50;
    state.page = 0;
    render();
  });
  var timer = null;
  document.getElementById("f-q").addEventListener("input", function (ev) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = ev.target.value.trim().toLowerCase(); refresh(); }, 150);
  });

  recompute();
  render();
  window.__report.ready = performance.now();
  window.__report.initMs = window.__report.ready - t0;
  document.documentElement.dataset.ready = "1";
  afterPaint(function () { window.__report.painted = performance.now(); });
})();
