// egjax graph explorer: plain JavaScript, no network. Data files are scripts next to this one
// that call EGX.receive(name, data); they are added to the page when first needed.
"use strict";

const ROW = 26;          // px per list row (matches --row in explorer.css)
const PATCH_PX = 124;    // patch canvases (shown at half size: sharp on dense screens)
const HEAT_PX = 128;     // heat-map thumbnails

window.EGX = {
  data: {}, waiting: {},
  receive(name, value) {
    this.data[name] = value;
    (this.waiting[name] || []).forEach((done) => done(value));
    delete this.waiting[name];
  },
};

function load(name) {
  if (name in EGX.data) return Promise.resolve(EGX.data[name]);
  return new Promise((resolve, reject) => {
    if (!EGX.waiting[name]) {
      EGX.waiting[name] = [];
      const script = document.createElement("script");
      script.src = `assets/data/${name}.js`;
      script.onerror = () => reject(new Error(`cannot read ${script.src}`));
      document.head.appendChild(script);
    }
    EGX.waiting[name].push(resolve);
  });
}

const images = {};
function image(n) {
  if (!images[n]) {
    images[n] = new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot read image ${n}`));
      img.src = `assets/images/${String(n).padStart(4, "0")}.jpg`;
    });
  }
  return images[n];
}

const state = { meta: null, layers: [], sort: "score", filter: null, selected: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const fmt = (x, digits) => (x === null || x === undefined ? "–" : x.toFixed(digits));
const signed = (x) => (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(0);

function nodeName(l, v) {
  const k = state.meta.layers[l].per_filter;
  return `f${Math.floor(v / k)}·${v % k}`;
}

// ---- columns ------------------------------------------------------------------------------

// Row order. By score: live nodes, highest first; then the dead. By stability: the nodes
// scoring at least meta.min_score, lowest instability first (none: after them); then the
// other live nodes by score; then the dead. Ties: the lower index first.
function group(l, v) {
  const layer = state.layers[l], summary = layer.summary;
  if (layer.dead.has(v)) return 3;
  if (state.sort === "score") return 0;
  if (summary.score[v] < state.meta.min_score) return 2;
  return summary.instability[v] === null ? 1 : 0;
}

function order(l) {
  const layer = state.layers[l], info = state.meta.layers[l];
  let nodes = [];
  if (state.filter === null) nodes = Array.from({ length: info.nodes }, (_, v) => v);
  else if (state.filter < info.filters) {
    for (let k = 0; k < info.per_filter; k++) nodes.push(state.filter * info.per_filter + k);
  }
  const score = layer.summary.score, unstable = layer.summary.instability;
  const rank = new Map(nodes.map((v) => [v, group(l, v)]));
  const within = (a, b) => (state.sort === "stability" && rank.get(a) === 0
    ? unstable[a] - unstable[b] : score[b] - score[a]);
  nodes.sort((a, b) => rank.get(a) - rank.get(b) || within(a, b) || a - b);
  layer.order = nodes;
  layer.row = new Map(nodes.map((v, i) => [v, i]));
}

function buildColumns() {
  const host = document.getElementById("columns");
  state.meta.layers.forEach((info, l) => {
    const list = el("div", { class: "list" });
    const spacer = el("div", { class: "spacer" });
    list.append(spacer);
    list.addEventListener("scroll", () => drawRows(l));
    const column = el("div", { class: "column", "data-layer": l },
      el("h2", {}, info.tap),
      el("div", { class: "info" },
        `${info.filters} filters × ${info.per_filter} = ${info.nodes} nodes · ` +
        `${info.map_size}² map · `, el("span", { class: "dead-count" }, `${info.dead} dead`)),
      el("div", { class: "heading" }, el("span", { class: "rank" }, "#"),
        el("span", { class: "name" }, "filter·node"), el("span", { class: "num score" }, "score"),
        el("span", { class: "num unstable" }, state.meta.instability ? "instab." : "")),
      list);
    host.append(column);
    state.layers[l] = { list, spacer, summary: null, dead: new Set(), order: [], row: new Map() };
    spacer.textContent = "loading…";
  });
}

function refreshColumn(l) {
  const layer = state.layers[l];
  if (!layer.summary) return;
  order(l);
  layer.spacer.textContent = "";
  layer.spacer.style.height = `${layer.order.length * ROW}px`;
  drawRows(l);
}

function drawRows(l) {
  const layer = state.layers[l], list = layer.list;
  if (!layer.summary) return;
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
  const last = Math.min(layer.order.length, first + Math.ceil(list.clientHeight / ROW) + 10);
  const score = layer.summary.score, unstable = layer.summary.instability;
  const best = layer.maxScore;
  const rows = [];
  for (let i = first; i < last; i++) {
    const v = layer.order[i];
    const chosen = state.selected && state.selected.l === l && state.selected.v === v;
    const kind = ["", "", " weak", " dead"][group(l, v)];
    const row = el("div", {
      class: `row${kind}${chosen ? " selected" : ""}`, "data-node": v, style: `top:${i * ROW}px`,
      title: `${state.meta.layers[l].tap} ${nodeName(l, v)}: ` + (layer.dead.has(v)
        ? "dead (score 0 in every image)"
        : `score ${fmt(score[v], 2)}` + (unstable ? `, instability ${fmt(unstable[v], 4)}` : "") +
          (kind === " weak" ? `; scores below ${state.meta.min_score}: not ranked by stability`
            : "")),
      onclick: () => select(l, v, false),
    },
      el("span", { class: "rank" }, `${i + 1}`),
      el("span", { class: "name" }, nodeName(l, v)),
      ...(layer.dead.has(v) ? [el("span", { class: "tag" }, "dead")] : [
        el("span", { class: "num", style: `background:linear-gradient(to left,#d6e4f4 ` +
          `${(100 * score[v] / best).toFixed(1)}%,transparent 0)` }, fmt(score[v], 2)),
        el("span", { class: "num" }, unstable ? fmt(unstable[v], 3) : "")]));
    rows.push(row);
  }
  layer.spacer.replaceChildren(...rows);
}

function reveal(l, v) {
  const layer = state.layers[l];
  if (!layer.row.has(v)) { setFilter(null); }
  const i = layer.row.get(v), list = layer.list;
  if (i === undefined) return;
  const top = i * ROW;
  if (top < list.scrollTop || top + ROW > list.scrollTop + list.clientHeight) {
    list.scrollTop = Math.max(0, top - list.clientHeight / 3);
  }
  drawRows(l);
}

function setSort(key) {
  state.sort = key;
  document.getElementById("sort-score").classList.toggle("on", key === "score");
  document.getElementById("sort-stability").classList.toggle("on", key === "stability");
  markSorted();
  state.layers.forEach((_, l) => { refreshColumn(l); state.layers[l].list.scrollTop = 0; });
}

function markSorted() {
  document.querySelectorAll(".heading .score")
    .forEach((e) => e.classList.toggle("sorted", state.sort === "score"));
  document.querySelectorAll(".heading .unstable")
    .forEach((e) => e.classList.toggle("sorted", state.sort === "stability"));
}

function setFilter(value) {
  state.filter = value;
  const input = document.getElementById("filter");
  if (value === null && input.value !== "") input.value = "";
  showFilterError(null);
  state.layers.forEach((_, l) => refreshColumn(l));
}

// The filter box takes a whole number from 0 to the largest filter index; anything else
// is refused with a message and shows every node.
function readFilter(text) {
  const most = Math.max(...state.meta.layers.map((info) => info.filters)) - 1;
  const value = text.trim();
  if (value === "") return { value: null };
  if (!/^\d+$/.test(value) || Number(value) > most) {
    return { error: `filter: a whole number from 0 to ${most}` };
  }
  return { value: Number(value) };
}

function showFilterError(message) {
  const input = document.getElementById("filter");
  input.classList.toggle("invalid", message !== null);
  input.setAttribute("aria-invalid", message !== null ? "true" : "false");
  document.getElementById("filter-error").textContent = message || "";
}

// ---- one node -----------------------------------------------------------------------------

async function select(l, v, scroll = true) {
  state.selected = { l, v };
  history.replaceState(null, "", `#${l}:${v}`);
  if (scroll) reveal(l, v);
  state.layers.forEach((_, i) => drawRows(i));
  const info = state.meta.layers[l];
  const detail = document.getElementById("detail");
  try {
    const chunk = await load(`layer${l}-${Math.floor(v / info.chunk)}`);
    if (!state.selected || state.selected.l !== l || state.selected.v !== v) return;
    const d = chunk.nodes[v - chunk.start];
    detail.replaceChildren(...(d.dead ? describeDead(l, v, d) : describe(l, v, d)));
  } catch (error) {
    detail.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
  }
}

function link(l, v, offset) {
  const label = `${state.meta.layers[l].tap} ${nodeName(l, v)}`;
  const a = el("a", { href: `#${l}:${v}`, title: "mean position relative to this node (dh, dw) px",
                      onclick: (event) => { event.preventDefault(); select(l, v); } }, label);
  if (offset) a.append(el("span", {}, `(${signed(offset[0])}, ${signed(offset[1])})`));
  return a;
}

function numbers(l, v, d) {
  const info = state.meta.layers[l], k = info.per_filter;
  const px = (cell) => info.center + cell * info.stride;
  return [
    ["layer", `${info.tap} (graph layer ${l})`],
    ["filter · node", `${Math.floor(v / k)} · ${v % k}   (flat index ${v})`],
    ["prior position", `cell (${fmt(d.coord[0], 1)}, ${fmt(d.coord[1], 1)}) = ` +
      `(${px(d.coord[0]).toFixed(0)}, ${px(d.coord[1]).toFixed(0)}) px, graph frame`],
    ["deformation", `${fmt(d.deform, 2)} cells`],
  ];
}

function table(rows) {
  return el("table", { class: "numbers" },
    ...rows.map(([name, value]) => el("tr", {}, el("td", {}, name), el("td", {}, value))));
}

function heading(l, v, dead) {
  const info = state.meta.layers[l], k = info.per_filter;
  return el("h3", {}, `${info.tap} · filter ${Math.floor(v / k)} · node ${v % k}`,
    ...(dead ? [" ", el("span", { class: "tag" }, "dead")] : []));
}

function describeDead(l, v, d) {
  return [
    heading(l, v, true),
    table(numbers(l, v, d).concat([["score", "0 in every image"]])),
    el("p", { class: "note" }, "A dead node: the EM never found it (score 0 in every image), " +
      "so it has no positions, patches, heat maps or instability, and the parents the EM " +
      "gave it carry no evidence. Dead nodes are listed last and left out of other nodes' " +
      "children."),
  ];
}

function describe(l, v, d) {
  const meta = state.meta, info = meta.layers[l], layer = state.layers[l];
  const summary = layer.summary;
  const rows = numbers(l, v, d).concat([
    ["score", `${fmt(summary.score[v], 3)} (mean of top-${meta.top_images} images), ` +
      `${fmt(summary.mean[v], 3)} (all images)`],
  ]);
  if (summary.instability) {
    rows.push(["instability", `${fmt(summary.instability[v], 4)} of the image diagonal` +
      (summary.score[v] < meta.min_score
        ? ` (score below ${meta.min_score}: not ranked by stability)` : "")]);
  }

  const patches = el("div", { class: "patches" }, ...d.top.map(([n, h, w, score]) => {
    const canvas = el("canvas", { width: PATCH_PX, height: PATCH_PX });
    image(n).then((img) => drawPatch(canvas, img, h, w, info.patch_side));
    return el("figure", { title: `image ${n}, score ${score.toFixed(3)}` }, canvas,
      el("figcaption", {}, `img ${n}`, el("br"),
        score < 100 ? score.toPrecision(3) : score.toFixed(0)));
  }));

  const heats = el("div", { class: "heats" }, ...d.heat.map((win) => {
    const canvas = el("canvas", { width: HEAT_PX, height: HEAT_PX });
    const spot = d.top.find((t) => t[0] === win[0]);
    image(win[0]).then((img) => drawHeat(canvas, img, win, spot, info));
    return el("figure", {}, canvas, el("figcaption", {}, `img ${win[0]}`));
  }));

  const parents = d.parents.length
    ? el("div", { class: "links" }, ...d.parents.map(([p, dh, dw]) => link(l + 1, p, [dh, dw])))
    : el("p", { class: "note" },
      l + 1 < meta.layers.length ? "none selected" : "top layer: no parents");
  const children = d.children.length
    ? el("div", { class: "links" }, ...d.children.map(([c, dh, dw]) => link(l - 1, c, [dh, dw])),
      ...(d.children_total > d.children.length
        ? [el("span", { class: "note" }, `and ${d.children_total - d.children.length} more`)] : []))
    : el("p", { class: "note" },
      l > 0 ? "no live node below takes this one as a parent" : "bottom layer");

  return [
    heading(l, v, false),
    table(rows),
    el("h4", {}, `Patches in its ${d.top.length} best images`),
    el("div", { class: "patches-wrap" }, patches),
    el("p", { class: "note" }, `${info.patch_side}-px squares around the node's position in ` +
      `its ${meta.patch_images} best images (fewer where it scores 0 in the rest; mirrored ` +
      "detections mapped back), best first, with the image and the node's score there; grey: " +
      "outside the image."),
    el("h4", {}, `Heat maps in its ${d.heat.length} best images`),
    heats,
    el("p", { class: "note" }, "The filter's rectified response inside the node's search window, " +
      "Gaussian-weighted (its deformation scale) around its position (ring); one colour scale " +
      "per node. Dashed: the patch."),
    el("h4", {}, `Parents (${d.parents.length})`), parents,
    el("h4", {}, `Children (${d.children_total})`), children,
    ...(l > 0 ? [el("p", { class: "note" }, "Live children only: dead nodes are left out.")]
      : []),
    el("p", { class: "note" }, "Offsets: the other node's mean position minus this node's, " +
      "(dh, dw) px in the graph's frame."),
  ];
}

function drawPatch(canvas, img, h, w, side) {
  const ctx = canvas.getContext("2d"), scale = canvas.width / side;
  ctx.fillStyle = "rgb(128,128,128)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const top = Math.floor(h - (side - 1) / 2 + 0.5), left = Math.floor(w - (side - 1) / 2 + 0.5);
  const y0 = Math.max(top, 0), x0 = Math.max(left, 0);
  const y1 = Math.min(top + side, img.naturalHeight), x1 = Math.min(left + side, img.naturalWidth);
  if (y1 > y0 && x1 > x0) {
    ctx.drawImage(img, x0, y0, x1 - x0, y1 - y0,
      (x0 - left) * scale, (y0 - top) * scale, (x1 - x0) * scale, (y1 - y0) * scale);
  }
}

function hot(value) {
  const clip = (x) => Math.max(0, Math.min(1, x));
  return [clip(3 * value), clip(3 * value - 1), clip(3 * value - 2)];
}

function drawHeat(canvas, img, win, spot, info) {
  const [, h0, w0, rows, cols, codes] = win;
  const ctx = canvas.getContext("2d"), scale = canvas.width / state.meta.image_size;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const bytes = atob(codes);
  const small = document.createElement("canvas");     // the window with a transparent border
  small.width = cols + 2;
  small.height = rows + 2;
  const pixels = small.getContext("2d").createImageData(cols + 2, rows + 2);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const value = bytes.charCodeAt(r * cols + c) / 255, at = 4 * ((r + 1) * (cols + 2) + c + 1);
      const [red, green, blue] = hot(value);
      const alpha = 255 * state.meta.heat_opacity * value;
      pixels.data.set([255 * red, 255 * green, 255 * blue, alpha], at);
    }
  }
  small.getContext("2d").putImageData(pixels, 0, 0);
  const cell = info.stride * scale;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, (info.center + (w0 - 1.5) * info.stride) * scale,
    (info.center + (h0 - 1.5) * info.stride) * scale, (cols + 2) * cell, (rows + 2) * cell);
  if (!spot) return;
  const [, h, w] = spot, side = info.patch_side * scale;
  ctx.setLineDash([3, 3]);
  ctx.strokeStyle = "rgba(255,255,255,0.85)";
  ctx.strokeRect(w * scale - side / 2, h * scale - side / 2, side, side);
  ctx.setLineDash([]);
  ctx.beginPath();
  ctx.arc(w * scale, h * scale, 4, 0, 2 * Math.PI);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ffffff";
  ctx.stroke();
  ctx.lineWidth = 1;
  ctx.strokeStyle = "#111111";
  ctx.stroke();
}

// ---- start --------------------------------------------------------------------------------

async function start() {
  const meta = state.meta = await load("meta");
  document.getElementById("title").textContent = meta.title;
  document.title = `${meta.title} · egjax graph explorer`;
  const total = meta.layers.reduce((sum, info) => sum + info.nodes, 0);
  document.getElementById("summary").textContent =
    `${meta.layers.length} layers · ${total.toLocaleString("en")} nodes · ${meta.images} images` +
    ` of ${meta.image_size} px`;
  document.getElementById("detail").replaceChildren(
    el("p", { class: "hint" }, "Click a node to see what it looks at."),
    el("p", { class: "note center" }, "Columns: the graph's layers, bottom to top. score: the " +
      `mean of a node's ${meta.top_images} best image scores (a layer's scores are normalised ` +
      "to mean 1). Dead nodes score 0 in every image: they are marked and listed last." +
      (meta.instability ? " instab.: its location instability, the spread of its distance " +
        "to the object's landmarks over those images, divided by the image diagonal (lower: " +
        `more stable); sorting by stability ranks the nodes scoring at least ` +
        `${meta.min_score} (the layer's mean score), then the weaker ones by score.`
        : " No landmarks were given, so no instability.")));
  const stability = document.getElementById("sort-stability");
  stability.disabled = !meta.instability;
  stability.title = `location instability, lowest first, of the nodes scoring at least ` +
    `${meta.min_score}; then the other live nodes by score; dead nodes last`;
  document.getElementById("threshold").textContent = meta.instability
    ? `stability ranks score ≥ ${meta.min_score}` : "";
  document.getElementById("sort-score").onclick = () => setSort("score");
  stability.onclick = () => setSort("stability");
  const input = document.getElementById("filter");
  input.max = Math.max(...meta.layers.map((info) => info.filters)) - 1;
  input.oninput = () => {
    // a number input reports "" for text it cannot parse: that is refused too
    const read = readFilter(input.validity.badInput ? "?" : input.value);
    if (read.error) {
      state.filter = null;
      state.layers.forEach((_, l) => refreshColumn(l));
      showFilterError(read.error);
    } else setFilter(read.value);
  };
  buildColumns();
  markSorted();
  await Promise.all(meta.layers.map(async (_, l) => {
    const summary = state.layers[l].summary = await load(`layer${l}`);
    state.layers[l].dead = new Set(summary.dead);
    state.layers[l].maxScore = summary.score.reduce((a, x) => (x > a ? x : a), 1e-9);
    refreshColumn(l);
  }));
  window.addEventListener("resize", () => state.layers.forEach((_, l) => drawRows(l)));
  const wanted = /^#(\d+):(\d+)$/.exec(location.hash);
  if (wanted && +wanted[1] < meta.layers.length && +wanted[2] < meta.layers[+wanted[1]].nodes) {
    select(+wanted[1], +wanted[2]);
  }
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  document.getElementById("detail").replaceChildren(
    el("p", { class: "error" }, `The explorer could not start: ${error.message || error}`));
  console.error(error);
});
