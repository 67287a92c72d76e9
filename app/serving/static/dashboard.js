// Stock tracker dashboard: polls the worker's JSON endpoints and updates the page in place.
//
// Every 1.5 s: /stats, /stock/?limit=1000, /supplier-orders/ and /recent; every 3 s the
// chart's /dashboard/windows; /config once at start. No framework and no innerHTML for
// data: every value from the worker is set with textContent (SKUs, dead-letter values
// and error texts are whatever producers wrote).
"use strict";

(() => {
  const POLL_MS = 1500;
  const CHART_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const num = new Intl.NumberFormat("en-US");
  const money = new Intl.NumberFormat("en-US", {
    minimumFractionDigits: 2,
    maximumFractionDigits: 2,
  });

  let config = {
    app_id: "",
    reorder_point: 20,
    reorder_target: 100,
    tumbling_seconds: 60,
    hopping_seconds: 300,
    hopping_step_seconds: 60,
    window_grace_seconds: 10,
    expedite_threshold: 2,
  };
  let configLoaded = false;

  const view = {
    sort: { key: "level", dir: 1 },
    filter: "",
    metric: "units",
    windows: [],
    stock: new Map(), // sku -> row handles
    lastOrder: "",
    expedites: 0, // raised in all (/stats)
    expeditesShown: 0, // in the recent list
  };

  // --- helpers ----------------------------------------------------------------------

  const byId = (id) => document.querySelector(`[data-testid="${id}"]`);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (name === "class") node.className = value;
        else if (name === "text") node.textContent = value;
        else node.setAttribute(name, value);
      }
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, value) {
    const node = byId(id);
    const text = typeof value === "number" ? num.format(value) : String(value);
    if (node && node.textContent !== text) node.textContent = text;
  }

  const hhmm = (iso) => (typeof iso === "string" && iso.length >= 16 ? iso.slice(11, 16) : "–");

  function windowLabel(start, end) {
    return `${hhmm(start)}–${hhmm(end)}`;
  }

  function shortText(value, max) {
    if (value === null || value === undefined) return "∅";
    const text = String(value);
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  // An empty panel says "Loading…" until its first answer arrived, then its own
  // empty text (its data-empty attribute): "No SKUs yet" only once that is true.
  function showEmpty(id, empty) {
    const node = byId(id);
    node.hidden = !empty;
    if (node.dataset.empty && node.textContent !== node.dataset.empty) {
      node.textContent = node.dataset.empty;
    }
  }

  function rawText(value) {
    if (value === null || value === undefined) return "(no value: a tombstone)";
    if (value === "") return "(empty)";
    return shortText(value, 160);
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function levelState(level) {
    if (level < 0) return "backlog";
    if (level < config.reorder_point) return "low";
    return "ok";
  }

  // --- totals -----------------------------------------------------------------------

  function renderStats(stats) {
    setText("stat-processed", stats.processed);
    setText("stat-processed-orders", stats.processed_orders);
    setText("stat-processed-stock-moves", stats.processed_stock_moves);
    setText("stat-dead-lettered", stats.dead_lettered);
    setText("stat-duplicates", stats.duplicates);
    setText("stat-late", stats.late);
    // Every expedite raised, not the length of the recent list (capped by /recent).
    if (typeof stats.expedites === "number") {
      view.expedites = stats.expedites;
      setText("expedite-count", stats.expedites);
      renderExpediteSub();
    }
    byId("stat-dead-lettered").classList.toggle("nonzero", stats.dead_lettered > 0);
  }

  // --- stock levels (rows keyed by SKU, updated in place) -----------------------------

  function makeStockRow(sku) {
    const level = el("td", { class: "num level", "data-testid": `level-${sku}` });
    const fill = el("div", { class: "lvl-fill" });
    const mark = el("div", { class: "lvl-mark", title: "reorder point" });
    const pill = el("span", { class: "pill", "data-testid": `status-${sku}` });
    const tr = el(
      "tr",
      { "data-testid": `row-${sku}` },
      el("td", { class: "sku" }, el("span", { class: "clip", title: sku, text: sku })),
      level,
      el("td", null, el("div", { class: "lvl-track" }, fill, mark)),
      el("td", null, pill),
    );
    return { sku, tr, level, fill, mark, pill, value: null, state: null };
  }

  function updateStockRow(row, level, scale) {
    if (row.value !== level) {
      const changed = row.value !== null;
      row.value = level;
      row.level.textContent = num.format(level);
      row.level.dataset.value = String(level);
      if (changed) {
        row.tr.classList.remove("changed");
        void row.tr.offsetWidth; // restart the flash animation
        row.tr.classList.add("changed");
      }
    }
    const state = levelState(level);
    if (row.state !== state) {
      row.state = state;
      row.tr.dataset.state = state;
      row.pill.className = `pill pill-${state}`;
    }
    const pill = state === "backlog" ? `backlog ${num.format(-level)}` : state;
    if (row.pill.textContent !== pill) row.pill.textContent = pill;
    row.fill.style.width = `${Math.max(0, Math.min(1, level / scale)) * 100}%`;
    row.mark.style.left = `${Math.min(1, config.reorder_point / scale) * 100}%`;
  }

  function compareRows(a, b) {
    const { key, dir } = view.sort;
    if (key === "level" && a.value !== b.value) return (a.value - b.value) * dir;
    if (a.sku === b.sku) return 0;
    return (a.sku < b.sku ? -1 : 1) * (key === "sku" ? dir : 1);
  }

  function renderStock(page) {
    const items = page.items || [];
    const rows = view.stock;
    const seen = new Set();
    const scale = Math.max(config.reorder_target, 1); // a full bar: at or above the target
    let low = 0;
    let backlog = 0;
    for (const { sku, level } of items) {
      let row = rows.get(sku);
      if (!row) {
        row = makeStockRow(sku);
        rows.set(sku, row);
      }
      updateStockRow(row, level, scale);
      seen.add(sku);
      if (level < 0) backlog += 1;
      else if (level < config.reorder_point) low += 1;
    }
    for (const [sku, row] of rows) {
      if (!seen.has(sku)) {
        row.tr.remove();
        rows.delete(sku);
      }
    }
    placeStockRows();
    setText("stat-skus", page.next ? `${num.format(items.length)}+` : items.length);
    setText("stat-low-skus", low);
    setText("stat-backlog-skus", backlog);
    showEmpty("empty-stock", items.length === 0);
    byId("stock-more").hidden = !page.next;
  }

  function placeStockRows() {
    const sorted = [...view.stock.values()].sort(compareRows);
    const order = sorted.map((r) => r.sku).join("\u0000");
    const filter = view.filter;
    for (const row of sorted) {
      row.tr.hidden = filter !== "" && !row.sku.toLowerCase().includes(filter);
    }
    if (order === view.lastOrder) return;
    view.lastOrder = order;
    byId("stock-rows").replaceChildren(...sorted.map((r) => r.tr));
  }

  function renderSortHeaders() {
    for (const th of document.querySelectorAll("th.sortable")) {
      if (th.dataset.sort === view.sort.key) th.dataset.dir = view.sort.dir > 0 ? "asc" : "desc";
      else delete th.dataset.dir;
    }
  }

  // --- supplier orders ----------------------------------------------------------------

  function renderSupplierOrders(doc) {
    const orders = doc.supplier_orders || [];
    let outstanding = 0;
    const rows = orders.map((so) => {
      outstanding += Math.max(0, so.quantity - so.delivered);
      const share = so.quantity > 0 ? Math.min(1, so.delivered / so.quantity) : 0;
      const bar = el("span", { class: "progress" }, el("i", { style: `width:${share * 100}%` }));
      return el(
        "tr",
        { "data-testid": `so-${so.supplier_order_id}` },
        el(
          "td",
          { class: "mono" },
          el("span", { class: "clip", title: `SKU ${so.sku}`, text: so.supplier_order_id }),
        ),
        el("td", { class: "num", text: num.format(so.quantity) }),
        el("td", { class: "num" }, num.format(so.delivered), bar),
        el("td", null, el("span", { class: `pill pill-${so.status}`, text: so.status.replace("_", " ") })),
      );
    });
    byId("supplier-order-rows").replaceChildren(...rows);
    showEmpty("empty-supplier-orders", rows.length === 0);
    setText("so-count", orders.length);
    setText("stat-open-supplier-orders", orders.length);
    setText("stat-outstanding-units", outstanding);
  }

  // --- recent: expedites, window results, dead letters --------------------------------

  function renderExpedites(expedites) {
    const items = expedites.map((ex) =>
      el(
        "li",
        { "data-testid": `expedite-${ex.sku}-${ex.window_start}` },
        el("span", { class: "title sku", title: ex.sku, text: ex.sku }),
        el("span", { class: "badge", text: `${num.format(ex.orders)} orders` }),
        el(
          "span",
          { class: "meta" },
          `window ${windowLabel(ex.window_start, ex.window_end)} UTC · threshold ${
            ex.threshold ?? config.expedite_threshold
          } · `,
          ex.supplier_order_id ? el("span", { class: "mono", text: ex.supplier_order_id }) : "no open supplier order",
        ),
      ),
    );
    byId("expedites-list").replaceChildren(...items);
    showEmpty("empty-expedites", items.length === 0);
    view.expeditesShown = items.length;
    renderExpediteSub();
  }

  function renderExpediteSub() {
    const { expedites, expeditesShown } = view;
    setText(
      "expedite-sub",
      expedites > expeditesShown
        ? `hopping windows over the threshold · newest ${num.format(expeditesShown)} shown`
        : "hopping windows over the threshold",
    );
  }

  function renderWindowResults(results) {
    const rows = results.map((r) =>
      el(
        "tr",
        null,
        el("td", { class: "dim", text: windowLabel(r.window_start, r.window_end) }),
        el("td", { class: "sku" }, el("span", { class: "clip", title: r.sku, text: r.sku })),
        el("td", null, el("span", { class: `pill pill-${r.kind}`, text: r.kind })),
        el("td", { class: "num", text: num.format(r.orders) }),
        el("td", { class: "num", text: num.format(r.units) }),
        el("td", { class: "num", text: money.format(r.revenue) }),
      ),
    );
    byId("window-result-rows").replaceChildren(...rows);
    showEmpty("empty-window-results", rows.length === 0);
  }

  function renderDeadLetters(dead) {
    const items = dead.map((d) =>
      el(
        "li",
        { "data-testid": `dead-letter-${d.source_topic}-${d.partition}-${d.offset}` },
        el("span", { class: "where", text: `${d.source_topic} [${d.partition}] @ ${d.offset}` }),
        el("span", { class: "badge", text: "rejected" }),
        el("span", { class: "err", text: shortText(d.error, 200) }),
        el("span", { class: "raw", title: d.value ?? "", text: rawText(d.value) }),
      ),
    );
    byId("dead-letters-list").replaceChildren(...items);
    showEmpty("empty-dead-letters", items.length === 0);
  }

  // --- chart: units (or orders) per tumbling window, hand-drawn SVG --------------------

  function niceMax(value) {
    if (value <= 4) return 4;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * magnitude >= value) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function renderChart() {
    const host = byId("window-chart");
    const windows = view.windows;
    const metric = view.metric;
    const width = Math.max(320, Math.round(host.clientWidth - 24));
    const height = 210;
    const pad = { top: 16, right: 8, bottom: 26, left: 44 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `${metric} per tumbling window`,
      "data-testid": "window-chart-svg",
    });
    const total = windows.reduce((s, w) => s + w[metric], 0);
    setText(
      "chart-sub",
      windows.length
        ? `all SKUs · ${config.tumbling_seconds} s windows · last ${windows.length} · ` +
            `${num.format(total)} ${metric}`
        : `all SKUs · ${config.tumbling_seconds} s windows (event time)`,
    );
    if (!windows.length) {
      root.append(
        svg("text", { class: "empty-text", x: width / 2, y: height / 2, "text-anchor": "middle" },
          `No windows yet: orders show up here per ${config.tumbling_seconds} s window`),
      );
      host.replaceChildren(root);
      return;
    }
    const top = niceMax(Math.max(...windows.map((w) => w[metric])));
    for (let i = 0; i <= 4; i += 1) {
      const value = (top / 4) * i;
      const y = pad.top + plotH - (plotH * i) / 4;
      root.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y, y2: y }));
      root.append(
        svg("text", { class: "axis-text", x: pad.left - 8, y: y + 4, "text-anchor": "end" }, num.format(value)),
      );
    }
    const slot = plotW / windows.length;
    const barW = Math.max(2, Math.min(44, slot * 0.7));
    const labelEvery = Math.max(1, Math.ceil(44 / slot));
    windows.forEach((w, i) => {
      const value = w[metric];
      const h = top > 0 ? (plotH * value) / top : 0;
      const x = pad.left + slot * i + (slot - barW) / 2;
      const y = pad.top + plotH - h;
      const bar = svg("rect", {
        class: w.closed ? "bar" : "bar open",
        x: x.toFixed(1),
        y: y.toFixed(1),
        width: barW.toFixed(1),
        height: Math.max(h, value > 0 ? 1 : 0).toFixed(1),
        rx: 2,
        "data-testid": `bar-${w.window_start}`,
      });
      bar.append(
        svg(
          "title",
          {},
          `${windowLabel(w.window_start, w.window_end)} UTC${w.closed ? "" : " (open)"}\n` +
            `${num.format(w.units)} units · ${num.format(w.orders)} orders · ` +
            `${num.format(w.skus)} SKUs · ${money.format(w.revenue)} revenue`,
        ),
      );
      root.append(bar);
      if (barW >= 22 && value > 0) {
        root.append(
          svg("text", { class: "val", x: (x + barW / 2).toFixed(1), y: (y - 4).toFixed(1), "text-anchor": "middle" },
            num.format(value)),
        );
      }
      if (i % labelEvery === 0) {
        root.append(
          svg("text", {
            class: "axis-text",
            x: (pad.left + slot * i + slot / 2).toFixed(1),
            y: height - 8,
            "text-anchor": "middle",
          }, hhmm(w.window_start)),
        );
      }
    });
    host.replaceChildren(root);
  }

  // --- settings -----------------------------------------------------------------------

  function renderConfig() {
    setText("app-id", config.app_id || "");
    setText("legend-reorder-point", config.reorder_point);
    setText(
      "config-summary",
      `Reorder below ${config.reorder_point} up to ${config.reorder_target} · ` +
        `tumbling ${config.tumbling_seconds} s · hopping ${config.hopping_seconds} s ` +
        `every ${config.hopping_step_seconds} s · grace ${config.window_grace_seconds} s · ` +
        `expedite above ${config.expedite_threshold} orders per hopping window`,
    );
  }

  // --- polling ------------------------------------------------------------------------

  function setConnection(ok, detail) {
    const node = byId("connection");
    node.dataset.state = ok ? "live" : "error";
    const now = new Date().toLocaleTimeString([], { hour12: false });
    setText("connection-text", ok ? `Live · updated ${now}` : `Worker unreachable (${detail}) · retrying`);
  }

  async function loadConfig() {
    try {
      config = { ...config, ...(await getJSON("/config")) };
      configLoaded = true;
      renderConfig();
    } catch (err) {
      // The defaults stand in until the next try.
    }
  }

  async function poll() {
    if (!configLoaded) await loadConfig();
    const [stats, stock, orders, recent] = await Promise.allSettled([
      getJSON("/stats"),
      getJSON("/stock/?limit=1000"),
      getJSON("/supplier-orders/"),
      getJSON("/recent"),
    ]);
    const failed = [stats, stock, orders, recent].find((r) => r.status === "rejected");
    try {
      if (stats.status === "fulfilled") renderStats(stats.value);
      if (stock.status === "fulfilled") renderStock(stock.value);
      if (orders.status === "fulfilled") renderSupplierOrders(orders.value);
      if (recent.status === "fulfilled") {
        renderExpedites(recent.value.expedites || []);
        renderWindowResults(recent.value.window_results || []);
        renderDeadLetters(recent.value.dead_letters || []);
      }
      setConnection(!failed, failed ? failed.reason.message : "");
    } catch (err) {
      setConnection(false, err.message);
    }
    window.setTimeout(poll, POLL_MS);
  }

  async function pollChart() {
    try {
      const doc = await getJSON("/dashboard/windows?limit=30");
      view.windows = doc.windows || [];
      renderChart();
    } catch (err) {
      // The connection indicator reports errors; the chart keeps its last picture.
    }
    window.setTimeout(pollChart, CHART_MS);
  }

  function wireControls() {
    for (const button of document.querySelectorAll(".seg button")) {
      button.addEventListener("click", () => {
        view.metric = button.dataset.metric;
        for (const b of document.querySelectorAll(".seg button")) {
          b.setAttribute("aria-pressed", String(b === button));
        }
        renderChart();
      });
    }
    for (const th of document.querySelectorAll("th.sortable")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        view.sort = { key, dir: view.sort.key === key ? -view.sort.dir : 1 };
        view.lastOrder = "";
        renderSortHeaders();
        placeStockRows();
      });
    }
    byId("stock-filter").addEventListener("input", (event) => {
      view.filter = event.target.value.trim().toLowerCase();
      placeStockRows();
    });
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(renderChart, 150);
    });
  }

  wireControls();
  renderSortHeaders();
  renderConfig();
  renderChart();
  poll();
  pollChart();
})();
