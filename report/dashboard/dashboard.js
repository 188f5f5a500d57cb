// The dashboard: a plain module, no build step. Everything it shows comes from the
// Stats API (docs/api.md), with the API key kept in this browser once entered.
// /dashboard lists the sites; /dashboard/<site>?period=…&date=…&filters=… shows one.
// Every figure is written with textContent (never as HTML), and carries its raw value
// in a data- attribute beside the formatted text.

const STATS = "/api/v1/stats";
const KEY_STORAGE = "analytics.apiKey";
const PAGE_SIZE = 10;
const REALTIME_EVERY_MS = 30_000;

const PERIODS = [
  ["day", "Today"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["month", "This month"],
  ["6mo", "Last 6 months"],
  ["12mo", "Last 12 months"],
  ["custom", "Custom range"],
];
const SUMMARY = [
  { metric: "visitors", label: "Unique visitors", format: count },
  { metric: "visits", label: "Total visits", format: count },
  { metric: "pageviews", label: "Total pageviews", format: count },
  { metric: "views_per_visit", label: "Views per visit", format: (v) => v.toFixed(2) },
  { metric: "bounce_rate", label: "Bounce rate", format: (v) => `${v}%`, lowerIsBetter: true },
  { metric: "visit_duration", label: "Visit duration", format: duration },
];
const PANELS = [
  { title: "Top sources", tabs: [["visit:source", "Sources"], ["visit:utm_source", "UTM sources"],
    ["visit:utm_medium", "UTM mediums"], ["visit:utm_campaign", "UTM campaigns"]] },
  { title: "Top pages", tabs: [["event:page", "Top pages"], ["visit:entry_page", "Entry pages"],
    ["visit:exit_page", "Exit pages"]] },
  { title: "Locations", tabs: [["visit:country", "Countries"]] },
  { title: "Devices", tabs: [["visit:browser", "Browsers"], ["visit:os", "Operating systems"],
    ["visit:device", "Devices"]] },
];

class NeedsKey extends Error {}

// ---- formatting -----------------------------------------------------------------

const whole = new Intl.NumberFormat("en");
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

function count(value) {
  return value >= 10_000 ? compact.format(value) : whole.format(value);
}

function duration(seconds) {
  if (seconds === null) return "–";
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return m ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
}

function countryName(code) {
  try {
    return `${new Intl.DisplayNames(["en"], { type: "region" }).of(code)} (${code})`;
  } catch {
    return code;
  }
}

// ---- small DOM helpers ------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// ---- the API ----------------------------------------------------------------------

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = {};
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(url, { headers });
  if (response.status === 401) throw new NeedsKey();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- what the page shows: the URL is the state ------------------------------------

function readState() {
  const query = new URLSearchParams(location.search);
  const site = decodeURIComponent(location.pathname.replace(/^\/dashboard\/?/, ""));
  const filters = (query.get("filters") || "").split(";").filter(Boolean);
  return {
    site,
    period: query.get("period") || "30d",
    date: query.get("date") || "",
    filters,
    pages: {}, // panel index: page number
    tabs: {}, // panel index: tab index
  };
}

function writeState(state) {
  const query = new URLSearchParams();
  if (state.period !== "30d") query.set("period", state.period);
  if (state.date) query.set("date", state.date);
  if (state.filters.length) query.set("filters", state.filters.join(";"));
  const search = query.toString();
  history.pushState(null, "", `${location.pathname}${search ? "?" + search : ""}`);
}

function queryParams(state, extra = {}) {
  return {
    site_id: state.site,
    period: state.period,
    date: state.period === "custom" || state.date ? state.date : "",
    filters: state.filters.join(";"),
    ...extra,
  };
}

function filterOf(property, value) {
  return `${property}==${value.replaceAll("|", "\\|")}`;
}

function propertyOf(filter) {
  return filter.split("==")[0];
}

// ---- the site page ------------------------------------------------------------------

let state = null;
let realtimeTimer = null;

async function showSite() {
  state = readState();
  const app = document.getElementById("app");
  app.replaceChildren(
    el("header", { class: "top" },
      el("h1", { text: state.site }),
      el("span", { class: "realtime", id: "realtime", "data-value": "", text: "…" }),
      el("span", { class: "spacer" }),
      periodPicker(),
    ),
    el("div", { class: "filters", id: "filters" }),
    el("section", { class: "card" },
      el("div", { class: "summary", id: "summary" }),
      el("div", { class: "chart", id: "chart" })),
    el("section", { class: "panels", id: "panels" },
      ...PANELS.map((_, i) => el("section", { class: "card panel", "data-panel": String(i) }))),
    el("footer", {},
      el("a", { href: "/dashboard", text: "All sites" }),
      el("a", { href: "#", onclick: forgetKey, text: "Forget API key" })),
  );
  await refresh();
  clearInterval(realtimeTimer);
  realtimeTimer = setInterval(() => realtime().catch(() => {}), REALTIME_EVERY_MS);
}

function periodPicker() {
  const select = el("select", { id: "period", "aria-label": "Period" },
    ...PERIODS.map(([value, label]) => el("option", { value, text: label })));
  select.value = state.period;
  const today = new Date().toISOString().slice(0, 10);
  const [from, to] = state.period === "custom" ? state.date.split(",") : ["", ""];
  const first = el("input", { type: "date", id: "from", value: from || today, "aria-label": "From" });
  const last = el("input", { type: "date", id: "to", value: to || today, "aria-label": "To" });
  const custom = el("span", { id: "custom-range", hidden: state.period === "custom" ? null : "" },
    first, " – ", last);
  const applyCustom = () => {
    if (first.value && last.value) {
      state.date = `${first.value},${last.value}`;
      changed();
    }
  };
  first.addEventListener("change", applyCustom);
  last.addEventListener("change", applyCustom);
  select.addEventListener("change", () => {
    state.period = select.value;
    state.date = "";
    custom.hidden = select.value !== "custom";
    if (select.value === "custom") applyCustom();
    else changed();
  });
  return el("span", {}, select, " ", custom);
}

function changed() {
  state.pages = {};
  writeState(state);
  refresh();
}

async function refresh() {
  const app = document.getElementById("app");
  app.dataset.loading = "true";
  try {
    renderFilters();
    await Promise.all([summary(), chart(), realtime(), ...PANELS.map((_, i) => panel(i))]);
    document.querySelector(".notice")?.remove();
  } catch (error) {
    showProblem(error);
  } finally {
    delete app.dataset.loading;
  }
}

function renderFilters() {
  const bar = document.getElementById("filters");
  bar.replaceChildren(...state.filters.map((filter) => {
    const [property, value] = filter.split("==");
    return el("span", { class: "chip", "data-filter": filter },
      `${property.replace(/^(visit|event):/, "").replace("_", " ")} is ${value.replaceAll("\\|", "|")}`,
      el("button", { "aria-label": `Remove filter ${filter}`, text: "×",
        onclick: () => { state.filters = state.filters.filter((f) => f !== filter); changed(); } }));
  }));
}

function addFilter(property, value) {
  state.filters = [...state.filters.filter((f) => propertyOf(f) !== property), filterOf(property, value)];
  changed();
}

async function summary() {
  const pageFiltered = state.filters.some((f) => propertyOf(f) === "event:page");
  const shown = SUMMARY.filter((m) => !(pageFiltered && m.metric === "views_per_visit"));
  const body = await api(`${STATS}/aggregate`, queryParams(state, {
    metrics: shown.map((m) => m.metric).join(","), compare: "previous_period",
  }));
  document.getElementById("summary").replaceChildren(...SUMMARY.map((m) => {
    const result = body.results[m.metric];
    if (!result) {
      return el("div", { class: "metric", "data-metric": m.metric },
        el("div", { class: "label", text: m.label }), el("div", { class: "value", text: "–" }));
    }
    const change = result.change;
    let tone = "";
    if (change) tone = (change > 0) !== Boolean(m.lowerIsBetter) ? "good" : "bad";
    const changeText = change === null || change === undefined ? ""
      : `${change > 0 ? "↑" : change < 0 ? "↓" : ""} ${Math.abs(change)}${m.metric === "bounce_rate" ? " pts" : "%"}`;
    return el("div", { class: "metric", "data-metric": m.metric, "data-value": String(result.value) },
      el("div", { class: "label", text: m.label }),
      el("div", { class: "value", text: m.format(result.value) }),
      el("div", { class: `change ${tone}`, "data-change": String(change ?? ""), text: changeText }));
  }));
}

async function chart() {
  const body = await api(`${STATS}/timeseries`, queryParams(state, { metrics: "visitors,pageviews" }));
  const rows = body.results;
  const width = 800, height = 220, left = 44, bottom = 24, top = 10;
  const top_value = niceCeiling(Math.max(1, ...rows.map((r) => Math.max(r.visitors, r.pageviews))));
  const right = 24;
  const x = (i) => left + (rows.length === 1 ? 0 : (i * (width - left - right)) / (rows.length - 1));
  const y = (v) => top + (height - top - bottom) * (1 - v / top_value);
  const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Visitors and pageviews over time", preserveAspectRatio: "none" });
  for (const fraction of [0, 0.5, 1]) {
    const value = Math.round(top_value * fraction);
    drawing.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), stroke: "#e5e7eb" }));
    const label = svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280" });
    label.textContent = count(value);
    drawing.append(label);
  }
  const points = (metric) => rows.map((r, i) => `${x(i)},${y(r[metric])}`).join(" ");
  if (rows.length) {
    drawing.append(svg("polygon", { points: `${x(0)},${y(0)} ${points("visitors")} ${x(rows.length - 1)},${y(0)}`,
      fill: "#e0e7ff" }));
    drawing.append(svg("polyline", { points: points("pageviews"), fill: "none", stroke: "#a5b4fc", "stroke-width": 2,
      "stroke-dasharray": "4 3" }));
    drawing.append(svg("polyline", { points: points("visitors"), fill: "none", stroke: "#4f46e5", "stroke-width": 2.5 }));
  }
  const every = Math.max(1, Math.ceil(rows.length / 7));
  rows.forEach((row, i) => {
    if (i % every === 0) {
      const label = svg("text", { x: x(i), y: height - 6, "text-anchor": "middle", "font-size": 11, fill: "#6b7280" });
      label.textContent = row.date.length > 10 ? row.date.slice(11, 16) : row.date.slice(5);
      drawing.append(label);
    }
    const spot = svg("circle", { cx: x(i), cy: y(row.visitors), r: 3, fill: "#4f46e5",
      "data-date": row.date, "data-visitors": row.visitors, "data-pageviews": row.pageviews });
    const tip = svg("title");
    tip.textContent = `${row.date}: ${whole.format(row.visitors)} visitors, ${whole.format(row.pageviews)} pageviews`;
    spot.append(tip);
    drawing.append(spot);
  });
  document.getElementById("chart").replaceChildren(drawing,
    el("div", { class: "legend" },
      el("span", { style: "color:#4f46e5", text: "Visitors" }),
      el("span", { style: "color:#a5b4fc", text: "Pageviews" })));
}

// The axis' top: the smallest 1, 2 or 5 times a power of ten at or above the largest value.
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((top) => top >= value);
}

async function realtime() {
  const url = new URL(`${STATS}/realtime/visitors`, location.origin);
  url.searchParams.set("site_id", state.site);
  const key = localStorage.getItem(KEY_STORAGE);
  const response = await fetch(url, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  if (!response.ok) return;
  const visitors = Number(await response.text());
  const node = document.getElementById("realtime");
  node.dataset.value = String(visitors);
  node.textContent = `${whole.format(visitors)} current visitor${visitors === 1 ? "" : "s"}`;
}

async function panel(index) {
  const spec = PANELS[index];
  const tab = state.tabs[index] || 0;
  const page = state.pages[index] || 1;
  const [property, label] = spec.tabs[tab];
  const key = property.startsWith("event:props:") ? property.slice(12) : property.split(":")[1];
  const body = await api(`${STATS}/breakdown`, queryParams(state, {
    property, metrics: "visitors", limit: PAGE_SIZE, page,
  }));
  const rows = body.results;
  const node = document.querySelector(`[data-panel="${index}"]`);
  const tabs = el("div", { class: "tabs", role: "tablist" }, ...spec.tabs.map(([, name], i) =>
    el("button", { role: "tab", "aria-selected": String(i === tab), text: name,
      onclick: () => { state.tabs[index] = i; state.pages[index] = 1; panel(index).catch(showProblem); } })));
  const most = Math.max(1, ...rows.map((r) => r.visitors));
  const list = rows.length
    ? el("ol", {}, ...rows.map((row) => {
      const value = String(row[key]);
      const name = property === "visit:country" ? countryName(value) : value;
      return el("li", { "data-property": property, "data-value": value, "data-count": String(row.visitors),
        title: `Filter by ${value}`, onclick: () => addFilter(property, value) },
        el("div", { class: "bar", style: `width:${(100 * row.visitors) / most}%` }),
        el("span", { class: "name", text: name }),
        el("span", { class: "count", text: count(row.visitors) }));
    }))
    : el("div", { class: "empty", text: "No data yet for this period" });
  const pager = el("div", { class: "pager" },
    el("button", { "data-pager": "previous", disabled: page > 1 ? null : "", text: "‹",
      "aria-label": "Previous page",
      onclick: () => { state.pages[index] = page - 1; panel(index).catch(showProblem); } }),
    el("span", { "data-page": String(page), text: `page ${page}` }),
    el("button", { "data-pager": "next", disabled: rows.length === PAGE_SIZE ? null : "", text: "›",
      "aria-label": "Next page",
      onclick: () => { state.pages[index] = page + 1; panel(index).catch(showProblem); } }));
  node.dataset.property = property;
  node.replaceChildren(
    el("div", { class: "head" }, el("h2", { text: spec.title }), tabs),
    el("div", { class: "columns" }, el("span", { text: label }), el("span", { text: "Visitors" })),
    list, pager);
}

// ---- the site list, the key, problems --------------------------------------------

async function showSites() {
  const app = document.getElementById("app");
  try {
    const { sites } = await api("/api/v1/sites");
    app.replaceChildren(
      el("header", { class: "top" }, el("h1", { text: "Sites" })),
      el("section", { class: "card" }, sites.length
        ? el("ul", { class: "sites" }, ...sites.map((site) =>
          el("li", { "data-site": site.site_id },
            el("a", { href: `/dashboard/${encodeURIComponent(site.site_id)}`, text: site.site_id }),
            el("span", { class: "muted", text: site.time_zone }))))
        : el("div", { class: "notice", text: "No site has data yet. Send an event, or add a site: python -m sites add" })),
      el("footer", {}, el("a", { href: "#", onclick: forgetKey, text: "Forget API key" })));
  } catch (error) {
    showProblem(error);
  }
}

function showProblem(error) {
  const app = document.getElementById("app");
  document.querySelector(".notice")?.remove();
  if (error instanceof NeedsKey) {
    const input = el("input", { type: "password", id: "api-key", placeholder: "ak_…", autocomplete: "off",
      "aria-label": "API key" });
    app.append(el("section", { class: "card notice", id: "key-form" },
      el("h2", { text: "This dashboard needs an API key" }),
      el("p", { text: "Make one with: python -m sites key create --name dashboard. It is kept in this browser only." }),
      el("form", { onsubmit: (event) => {
        event.preventDefault();
        localStorage.setItem(KEY_STORAGE, input.value.trim());
        start();
      } }, input, el("button", { type: "submit", text: "Open" }))));
    return;
  }
  app.append(el("section", { class: "card notice", role: "alert" },
    el("h2", { text: "The figures could not be read" }), el("p", { text: String(error.message || error) })));
}

function forgetKey(event) {
  event.preventDefault();
  localStorage.removeItem(KEY_STORAGE);
  start();
}

function start() {
  if (location.pathname.replace(/\/$/, "") === "/dashboard") showSites();
  else showSite();
}

window.addEventListener("popstate", start);
start();
