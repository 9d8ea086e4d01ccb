// The analytics dashboard: a single page over the analytics API (/v1/...).
//
// Every figure on the page is the API's figure; the page only formats it (thousands
// separators, yen, percentages). Charts are Apache ECharts (static/vendor/).
// No build step: a plain ES module.

const KEY_STORE = 'crm.analytics.apiKey';
const DEFAULT_KEY = 'dev-read-key';
const TZ = 'Asia/Tokyo';

// The KPI tiles, in order: API field, label, Japanese label, format, definition.
const KPIS = [
  ['active_customers', 'Active customers', 'アクティブ顧客', 'int', 'Customers with a purchase in the period'],
  ['new_customers', 'New customers', '新規顧客', 'int', 'Customers whose first purchase ever is in the period'],
  ['orders', 'Orders', '注文数', 'int', 'Purchases in the period, anonymous sales included'],
  ['revenue', 'Revenue', '売上', 'yen', 'Purchases minus refunds, anonymous sales included'],
  ['aov', 'Average order value', '客単価', 'yen', 'Gross purchase value / purchases (identified customers)'],
  ['purchase_frequency', 'Purchase frequency', '購入頻度', 'dec2', 'Purchases / active customers'],
  ['historical_ltv', 'Historical LTV', '顧客生涯価値', 'yen', "Net revenue of all time up to the period's end / customers who purchased by then"],
  ['repeat_purchase_rate', 'Repeat-purchase rate', 'リピート率', 'pct', 'Active customers with 2+ purchases / active'],
  ['retention_rate', 'Retention', '継続率', 'pct', 'Active in the previous period and in this one / active in the previous'],
  ['churn_rate', 'Churn', '離反率', 'pct', '1 − retention'],
  ['cross_sell_rate', 'Cross-sell rate', 'クロスセル率', 'pct', 'Active customers who bought in 2+ categories / active'],
  ['up_sell_rate', 'Up-sell rate', 'アップセル率', 'pct', 'Retained customers whose highest price band rose / retained'],
  ['omnichannel_share', 'Omnichannel share', 'オムニチャネル比率', 'pct', 'Active customers who bought in 2+ channels / active'],
];

const SEGMENTS = {
  new: { en: 'New', ja: '新規', color: '#5b8def' },
  repeat: { en: 'Repeat', ja: 'リピート', color: '#2fa37a' },
  loyal: { en: 'Loyal', ja: '優良', color: '#e0a030' },
  dormant: { en: 'Dormant', ja: '休眠', color: '#9aa3ae' },
};

const CHANNEL_LABELS = { store: 'Store', online: 'Online', app: 'App' };
const PALETTE = ['#2f6fde', '#2fa37a', '#e0a030', '#d4574e', '#7a5cc7'];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)').matches;

// -- formatting (the only transformation figures go through) -------------------------

const INT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const COMPACT = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

export const fmt = {
  int: (v) => (v == null ? '—' : INT.format(v)),
  yen: (v) => {
    if (v == null) return '—';
    const r = Math.round(v);
    return (r < 0 ? '-' : '') + '¥' + INT.format(Math.abs(r));
  },
  pct: (v, digits = 1) => (v == null ? '—' : (v * 100).toFixed(digits) + '%'),
  dec2: (v) => (v == null ? '—' : Number(v).toFixed(2)),
  dec1: (v) => (v == null ? '—' : Number(v).toFixed(1)),
};

function formatAs(kind, value) {
  return fmt[kind](value);
}

// -- dates (ISO strings, JST business days) ------------------------------------------

function partsIn(date, options) {
  const parts = new Intl.DateTimeFormat('en-US', { timeZone: TZ, hourCycle: 'h23', ...options }).formatToParts(date);
  return Object.fromEntries(parts.map((p) => [p.type, p.value]));
}

function todayJst() {
  const p = partsIn(new Date(), { year: 'numeric', month: '2-digit', day: '2-digit' });
  return `${p.year}-${p.month}-${p.day}`;
}

function utcDate(iso) {
  const [y, m, d] = iso.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d));
}

function addDays(iso, n) {
  const t = utcDate(iso);
  t.setUTCDate(t.getUTCDate() + n);
  return t.toISOString().slice(0, 10);
}

/** The first day of the month ``back`` months before the month of ``iso``. */
function monthStart(iso, back = 0) {
  const [y, m] = iso.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1 - back, 1)).toISOString().slice(0, 10);
}

function monthIndex(iso) {
  const [y, m] = iso.split('-').map(Number);
  return y * 12 + (m - 1);
}

/** An instant (ISO 8601, UTC) as "YYYY-MM-DD HH:mm" in Japan time. */
function instantJst(iso) {
  if (!iso) return '—';
  const p = partsIn(new Date(iso), {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
  });
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
}

function bucketLabel(iso, interval) {
  if (interval === 'month') return iso.slice(0, 7);
  if (interval === 'week') return `Week of ${iso}`;
  return iso;
}

// -- DOM helpers -------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setState(el, value) {
  if (el) el.dataset.state = value;
}

// -- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message);
    this.status = status;
    this.code = code;
    this.path = path;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || DEFAULT_KEY;
}

async function apiFetch(path, params = {}) {
  const url = new URL(`v1/${path}`, document.baseURI);
  for (const [k, v] of Object.entries(params)) {
    if (v != null && v !== '') url.searchParams.set(k, v);
  }
  let res;
  try {
    res = await fetch(url, { headers: { 'X-API-Key': apiKey(), Accept: 'application/json' } });
  } catch (exc) {
    throw new ApiError(0, 'network_error', `the analytics API could not be reached (${exc.message})`, path);
  }
  if (!res.ok) {
    let body = null;
    try {
      body = await res.json();
    } catch {
      // not JSON: the status says enough
    }
    const err = body && body.error ? body.error : {};
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, path);
  }
  return res;
}

async function api(path, params) {
  return (await apiFetch(path, params)).json();
}

// -- the error banner ----------------------------------------------------------------------

const HINTS = {
  401: 'The API did not accept the API key. Enter a valid key (X-API-Key) above.',
  403: 'This API key lacks the analytics:read scope. Use a key that holds it.',
  422: 'The API refused the request. Check the period (From must be on or before To) and the filters.',
};

function showError(err) {
  const banner = $('#error-banner');
  const status = err instanceof ApiError ? err.status : 0;
  const code = err instanceof ApiError ? err.code : 'error';
  const title = status ? `${status} ${code}` : code;
  const hint = HINTS[status] || (status >= 500 ? 'The analytics service failed; try again shortly.' : '');
  $('.banner-title', banner).textContent = title;
  $('.banner-text', banner).textContent = `${err.message}${hint ? ' — ' + hint : ''}`;
  banner.dataset.status = String(status);
  banner.dataset.code = code;
  banner.hidden = false;
}

function clearError() {
  const banner = $('#error-banner');
  banner.hidden = true;
  delete banner.dataset.status;
  delete banner.dataset.code;
}

// -- charts ----------------------------------------------------------------------------------

const FONT = 'system-ui, -apple-system, "Segoe UI", "Hiragino Sans", "Noto Sans CJK JP", "Noto Sans JP", sans-serif';

function chartFor(el) {
  const echarts = window.echarts;
  let chart = echarts.getInstanceByDom(el);
  if (!chart) {
    chart = echarts.init(el, null, { renderer: 'canvas' });
    new ResizeObserver(() => chart.resize()).observe(el);
  }
  return chart;
}

function baseOption() {
  return {
    animation: !reducedMotion,
    animationDuration: 400,
    textStyle: { fontFamily: FONT },
    color: PALETTE,
  };
}

function emptyGraphic(text) {
  return {
    type: 'text',
    left: 'center',
    top: 'middle',
    style: { text, fill: '#8a94a3', font: `14px ${FONT}` },
  };
}

function axisTooltip(interval, format) {
  return {
    trigger: 'axis',
    formatter: (items) => {
      if (!items.length) return '';
      const head = bucketLabel(items[0].data[0], interval);
      const lines = items.map((i) => `${i.marker}${i.seriesName}: <b>${format(i.data[1])}</b>`);
      return [head, ...lines].join('<br>');
    },
  };
}

function timeAxis(interval) {
  return {
    type: 'time',
    axisLabel: {
      hideOverlap: true,
      // the year at its first month, then month names (then days, for daily buckets)
      formatter: { year: '{yyyy}', month: '{MMM}', day: '{MMM} {d}' },
    },
    splitLine: { show: false },
  };
}

function renderRevenue(data, interval) {
  const el = $('#chart-revenue');
  const points = data.points.map((p) => [p.bucket, p.value]);
  chartFor(el).setOption(
    {
      ...baseOption(),
      grid: { left: 64, right: 20, top: 20, bottom: 36 },
      tooltip: axisTooltip(interval, fmt.yen),
      xAxis: timeAxis(interval),
      yAxis: { type: 'value', axisLabel: { formatter: (v) => '¥' + COMPACT.format(v) } },
      graphic: points.length ? [] : [emptyGraphic('No revenue in this period')],
      series: [
        {
          id: 'revenue',
          name: 'Revenue',
          type: 'bar',
          data: points,
          barMaxWidth: 26,
          itemStyle: { color: '#2f6fde', borderRadius: [3, 3, 0, 0] },
        },
      ],
    },
    { notMerge: true },
  );
  setState(el, 'ready');
}

function renderActive(active, fresh, interval) {
  const el = $('#chart-active');
  const a = active.points.map((p) => [p.bucket, p.value]);
  const n = fresh.points.map((p) => [p.bucket, p.value]);
  chartFor(el).setOption(
    {
      ...baseOption(),
      grid: { left: 52, right: 20, top: 32, bottom: 36 },
      legend: { top: 0, right: 8, itemWidth: 14, itemHeight: 8 },
      tooltip: axisTooltip(interval, fmt.int),
      xAxis: timeAxis(interval),
      yAxis: { type: 'value', minInterval: 1 },
      graphic: a.length || n.length ? [] : [emptyGraphic('No customers in this period')],
      series: [
        {
          id: 'active_customers',
          name: 'Active customers',
          type: 'bar',
          data: a,
          barMaxWidth: 14,
          itemStyle: { color: '#2f6fde', borderRadius: [2, 2, 0, 0] },
        },
        {
          id: 'new_customers',
          name: 'New customers',
          type: 'bar',
          data: n,
          barMaxWidth: 14,
          itemStyle: { color: '#2fa37a', borderRadius: [2, 2, 0, 0] },
        },
      ],
    },
    { notMerge: true },
  );
  setState(el, 'ready');
}

function renderCohorts(data, period) {
  const el = $('#cohort-heatmap');
  const cohorts = data.cohorts;
  const offsets = data.offsets;
  // The period's last month: a cohort's later months are not observed yet, so blank.
  const lastMonth = monthIndex(addDays(period.end, -1));
  const cells = [];
  let top = 0;
  cohorts.forEach((c, y) => {
    offsets.forEach((offset, x) => {
      if (monthIndex(c.cohort) + offset > lastMonth) return;
      const rate = c.rates[x];
      if (offset > 0 && rate != null) top = Math.max(top, rate);
      cells.push({ value: [x, y, rate == null ? '-' : rate], count: c.counts[x], size: c.size, cohort: c.cohort, offset });
    });
  });
  const rows = cohorts.map((c) => `${c.cohort.slice(0, 7)}  n=${INT.format(c.size)}`);
  chartFor(el).setOption(
    {
      ...baseOption(),
      grid: { left: 118, right: 24, top: 30, bottom: 64 },
      tooltip: {
        formatter: (p) => {
          const d = p.data;
          const head = `Cohort <b>${d.cohort.slice(0, 7)}</b> (first purchase)`;
          if (d.offset === 0) return `${head}<br>${INT.format(d.size)} customers`;
          return `${head} · month +${d.offset}<br>${INT.format(d.count)} of ${INT.format(d.size)} customers bought again`
            + ` (<b>${fmt.pct(d.value[2])}</b>)`;
        },
      },
      xAxis: {
        type: 'category',
        position: 'top',
        data: offsets.map((o) => (o === 0 ? 'first' : `+${o} mo`)),
        splitArea: { show: true },
        axisTick: { show: false },
      },
      yAxis: { type: 'category', data: rows, inverse: true, splitArea: { show: true }, axisTick: { show: false } },
      visualMap: {
        type: 'continuous',
        dimension: 2,
        min: 0,
        max: Math.max(top, 0.01),
        calculable: false,
        orient: 'horizontal',
        left: 'center',
        bottom: 4,
        itemHeight: 220,
        itemWidth: 12,
        text: ['higher retention', 'lower'],
        formatter: (v) => fmt.pct(v, 0),
        inRange: { color: ['#f1f6fe', '#9cc0f5', '#2f6fde', '#163c8c'] },
      },
      graphic: cohorts.length ? [] : [emptyGraphic('No first purchases in this period')],
      series: [
        {
          id: 'cohorts',
          name: 'Retention',
          type: 'heatmap',
          data: cells,
          label: {
            show: true,
            fontSize: 11,
            formatter: (p) => (p.data.offset === 0 ? fmt.int(p.data.size) : fmt.pct(p.data.value[2], 0)),
          },
          itemStyle: { borderColor: '#fff', borderWidth: 2 },
          emphasis: { itemStyle: { borderColor: '#1b2430', borderWidth: 1 } },
        },
      ],
    },
    { notMerge: true },
  );
  setState(el, 'ready');
}

// -- KPI tiles -------------------------------------------------------------------------------

function buildTiles() {
  const grid = $('#kpi-tiles');
  grid.replaceChildren(
    ...KPIS.map(([field, label, ja, kind, help]) =>
      h(
        'div',
        { class: `kpi kpi-${kind}`, 'data-testid': `kpi-${field}`, 'data-field': field, title: help },
        h('div', { class: 'kpi-label' }, label, h('span', { class: 'ja' }, ja)),
        h('div', { class: 'kpi-value', 'data-testid': `kpi-${field}-value` }, '…'),
        h('div', { class: 'kpi-sub', 'data-testid': `kpi-${field}-sub` }),
      ),
    ),
  );
}

function renderKpis(data) {
  for (const [field, , , kind] of KPIS) {
    const tile = $(`[data-testid="kpi-${field}"]`);
    const value = data[field];
    tile.dataset.value = JSON.stringify(value ?? null);
    $('.kpi-value', tile).textContent = formatAs(kind, value);
    tile.classList.toggle('is-null', value == null);
  }
  const sub = (field, text) => {
    $(`[data-testid="kpi-${field}-sub"]`).textContent = text;
  };
  sub('active_customers', `${fmt.int(data.repeat_customers)} with 2+ purchases`);
  sub('revenue', `anonymous ${fmt.yen(data.anonymous_revenue)}`);
  const prev = data.previous_period;
  const prevText = `vs previous ${fmt.int(data.period.days)} days`;
  sub('retention_rate', data.retention_rate == null ? 'no purchases in the previous period' : prevText);
  sub('churn_rate', data.churn_rate == null ? 'no purchases in the previous period' : prevText);
  sub('up_sell_rate', data.up_sell_rate == null ? 'no retained customers' : 'of retained customers');
  const p = data.period;
  $('#period-note').textContent =
    `${p.start} – ${addDays(p.end, -1)} · ${fmt.int(p.days)} days · previous period ${prev.start} – ${addDays(prev.end, -1)}`;
  setState($('#kpi-tiles'), 'ready');
}

// -- segments --------------------------------------------------------------------------------

const members = { segment: null, offset: 0, limit: 25, params: null };

function renderSegments(data) {
  const rows = data.segments;
  const chartEl = $('#segment-chart');
  chartFor(chartEl).setOption(
    {
      ...baseOption(),
      grid: { left: 48, right: 16, top: 24, bottom: 48 },
      tooltip: {
        trigger: 'item',
        formatter: (p) => `${p.name.replace('\n', ' ')}<br><b>${fmt.int(p.value)}</b> customers`,
      },
      xAxis: {
        type: 'category',
        data: rows.map((s) => `${(SEGMENTS[s.segment] || {}).en || s.segment}\n${(SEGMENTS[s.segment] || {}).ja || ''}`),
        axisTick: { show: false },
      },
      yAxis: { type: 'value', minInterval: 1 },
      series: [
        {
          id: 'segments',
          name: 'Customers',
          type: 'bar',
          barMaxWidth: 56,
          data: rows.map((s) => ({ value: s.customers, itemStyle: { color: (SEGMENTS[s.segment] || {}).color } })),
          label: { show: true, position: 'top', formatter: (p) => fmt.int(p.value) },
        },
      ],
    },
    { notMerge: true },
  );
  setState(chartEl, 'ready');

  const body = $('#segment-table tbody');
  body.replaceChildren(
    ...rows.map((s) => {
      const meta = SEGMENTS[s.segment] || { en: s.segment, ja: '', color: '#999' };
      return h(
        'tr',
        { 'data-testid': `segment-${s.segment}`, 'data-customers': s.customers },
        h(
          'td',
          {},
          h('span', { class: 'swatch', style: `background:${meta.color}` }),
          h('span', { class: 'seg-name' }, meta.en),
          h('span', { class: 'ja' }, meta.ja),
        ),
        h('td', { class: 'num', 'data-testid': `segment-${s.segment}-customers` }, fmt.int(s.customers)),
        h('td', { class: 'num', 'data-testid': `segment-${s.segment}-revenue` }, fmt.yen(s.revenue)),
        h('td', { class: 'num' }, fmt.dec2(s.avg_orders)),
        h('td', { class: 'num' }, `${fmt.dec1(s.avg_recency_days)} d`),
        h(
          'td',
          { class: 'actions' },
          h('button', {
            type: 'button', class: 'btn btn-small', 'data-testid': `segment-list-${s.segment}`,
            onclick: () => openMembers(s.segment, 0),
          }, 'List'),
          h('button', {
            type: 'button', class: 'btn btn-small', 'data-testid': `segment-csv-${s.segment}`,
            title: `Download the ${meta.en} customers as CSV`,
            onclick: () => downloadCsv(s.segment),
          }, 'CSV ↓'),
        ),
      );
    }),
  );
  setState($('#segment-table'), 'ready');
  $('#segments-note').textContent =
    `RFM segments as of ${data.as_of} · dormant after ${fmt.int(data.rules.dormant_days)} days · loyal from `
    + `${fmt.int(data.rules.loyal_min_orders)} orders and ${fmt.yen(data.rules.loyal_min_revenue)}`;

  $('#rfm-list').replaceChildren(
    ...data.rfm.map((r) =>
      h('span', { class: 'rfm-chip', 'data-testid': 'rfm-cell' }, h('code', {}, r.rfm), ' ', fmt.int(r.customers)),
    ),
  );
  if (members.segment) openMembers(members.segment, 0);
}

async function downloadCsv(segment) {
  const p = members.params;
  try {
    const res = await apiFetch(`segments/${encodeURIComponent(segment)}/customers`, {
      format: 'csv', as_of: p.as_of, channel: p.channel,
    });
    const blob = await res.blob();
    const disposition = res.headers.get('Content-Disposition') || '';
    const match = disposition.match(/filename="?([^";]+)"?/);
    const name = match ? match[1] : `segment-${segment}-${p.as_of}.csv`;
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30_000);
  } catch (err) {
    showError(err);
  }
}

async function openMembers(segment, offset) {
  const card = $('#segment-members');
  const meta = SEGMENTS[segment] || { en: segment, ja: '' };
  members.segment = segment;
  members.offset = Math.max(0, offset);
  card.hidden = false;
  setState(card, 'loading');
  $('#segment-members-title').textContent = `${meta.en} ${meta.ja} — customers by revenue`;
  const p = members.params;
  try {
    const data = await api(`segments/${encodeURIComponent(segment)}/customers`, {
      as_of: p.as_of, channel: p.channel, limit: members.limit, offset: members.offset,
    });
    if (members.segment !== segment) return;
    $('#segment-members-body').replaceChildren(
      ...data.customers.map((c) => {
        const id = String(c.customer_id);
        const who = UUID_RE.test(id)
          ? h('a', { href: `#/customer/${id}`, class: 'mono' }, id)
          : h('span', { class: 'mono muted', title: 'an identifier not linked to a customer yet' }, `${id.slice(0, 16)}…`);
        return h(
          'tr',
          { 'data-testid': 'segment-member-row' },
          h('td', {}, who),
          h('td', {}, h('code', {}, c.rfm)),
          h('td', { class: 'num' }, fmt.int(c.orders)),
          h('td', { class: 'num' }, fmt.yen(c.revenue)),
          h('td', { class: 'num' }, fmt.int(c.recency_days)),
          h('td', {}, c.first_day),
          h('td', {}, c.last_day),
        );
      }),
    );
    const first = data.customers.length ? members.offset + 1 : 0;
    $('#members-page').textContent = `${fmt.int(first)}–${fmt.int(members.offset + data.customers.length)}`;
    $('#members-prev').disabled = members.offset === 0;
    $('#members-next').disabled = data.customers.length < members.limit;
    setState(card, 'ready');
  } catch (err) {
    setState(card, 'error');
    showError(err);
  }
}

// -- status ------------------------------------------------------------------------------------

async function loadStatus() {
  const data = await api('status');
  const last = data.last_ingested ? `${instantJst(data.last_ingested)} JST` : 'never';
  $('#status').textContent = `${fmt.int(data.events)} events · last ingested ${last}`;
}

// -- the overview ----------------------------------------------------------------------------

let overviewGeneration = 0;
let overviewLoadedFor = null;

function controls() {
  const start = $('#period-start').value;
  const to = $('#period-to').value;
  return {
    start,
    end: to ? addDays(to, 1) : '',
    channel: $('#channel').value,
    interval: $('#interval').value,
  };
}

async function loadOverview() {
  const gen = ++overviewGeneration;
  const c = controls();
  const period = { start: c.start, end: c.end, channel: c.channel };
  overviewLoadedFor = JSON.stringify(c);
  members.params = { as_of: c.end, channel: c.channel };
  clearError();
  document.body.dataset.overview = 'loading';
  for (const sel of ['#kpi-tiles', '#chart-revenue', '#chart-active', '#cohort-heatmap', '#segment-chart', '#segment-table', '#support-kpis']) {
    setState($(sel), 'loading');
  }
  const current = () => gen === overviewGeneration;
  const section = (selectors, work) =>
    work().catch((err) => {
      if (current()) for (const sel of selectors) failSection(sel);
      throw err;
    });
  const ts = (metric) => api('kpis/timeseries', { ...period, metric, interval: c.interval });
  const results = await Promise.allSettled([
    section(['#kpi-tiles'], async () => {
      const data = await api('kpis/overview', period);
      if (current()) renderKpis(data);
    }),
    section(['#chart-revenue'], async () => {
      const data = await ts('revenue');
      if (current()) renderRevenue(data, c.interval);
    }),
    section(['#chart-active'], async () => {
      const [active, fresh] = await Promise.all([ts('active_customers'), ts('new_customers')]);
      if (current()) renderActive(active, fresh, c.interval);
    }),
    section(['#cohort-heatmap'], async () => {
      const data = await api('cohorts', { ...period, grain: 'month' });
      if (current()) renderCohorts(data, period);
    }),
    section(['#segment-chart', '#segment-table'], async () => {
      const data = await api('segments', { as_of: c.end, channel: c.channel });
      if (current()) renderSegments(data);
    }),
    section(['#support-kpis'], async () => {
      const data = await api('support/kpis', { start: c.start, end: c.end });
      if (current()) renderSupport(data.total);
    }),
    loadStatus(),
  ]);
  if (!current()) return;
  const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  if (failed.length) {
    // The most telling failure first: auth, then validation, then the rest.
    const rank = (e) => ({ 401: 0, 403: 1, 422: 2 })[e.status] ?? 3;
    failed.sort((a, b) => rank(a) - rank(b));
    showError(failed[0]);
    document.body.dataset.overview = 'error';
  } else {
    document.body.dataset.overview = 'ready';
  }
}

// -- support -----------------------------------------------------------------------------------

/** Seconds as hours with one decimal ("—" when there is nothing to measure). */
function hours(seconds) {
  return seconds == null ? '—' : `${fmt.dec1(seconds / 3600)} h`;
}

function renderSupport(t) {
  const el = $('#support-kpis');
  el.replaceChildren(
    figure('Opened 受付', fmt.int(t.opened), 'support-opened'),
    figure('Resolved 解決', fmt.int(t.resolved), 'support-resolved'),
    figure('Backlog 未解決', fmt.int(t.backlog), 'support-backlog'),
    figure('First response 初回応答', hours(t.median_first_response_seconds), 'support-first-response'),
    figure('Resolution 解決時間', hours(t.median_resolution_seconds), 'support-resolution'),
    figure('SLA met SLA達成率', fmt.pct(t.sla_met_rate), 'support-sla'),
    figure('CSAT 満足度', t.csat_average == null ? '—' : fmt.dec2(t.csat_average), 'support-csat'),
  );
  setState(el, 'ready');
}

/** A section whose request failed shows no figures rather than stale ones. */
function failSection(selector) {
  const el = $(selector);
  setState(el, 'error');
  if (selector === '#kpi-tiles') {
    for (const tile of el.querySelectorAll('.kpi')) {
      $('.kpi-value', tile).textContent = '—';
      $('.kpi-sub', tile).textContent = '';
      delete tile.dataset.value;
    }
    $('#period-note').textContent = '';
  } else if (selector === '#support-kpis') {
    el.replaceChildren();
  } else if (selector === '#segment-table') {
    $('tbody', el).replaceChildren();
    $('#rfm-list').replaceChildren();
  } else if (window.echarts) {
    const chart = window.echarts.getInstanceByDom(el);
    if (chart) {
      chart.clear();
      chart.setOption({ graphic: [emptyGraphic('Could not load — see the message above')] });
    }
  }
}

function defaultPeriod() {
  // The last 12 months up to today: from the first day of the month 11 months back
  // to today (JST), inclusive — 11 full months and the current month so far.
  const today = todayJst();
  $('#period-start').value = monthStart(today, 11);
  $('#period-to').value = today;
}

// -- customer 360 ------------------------------------------------------------------------------

let customerGeneration = 0;
const timelineState = { id: null, oldest: null, oldestId: null, limit: 100 };

function fact(label, value, testid) {
  return [h('dt', {}, label), h('dd', testid ? { 'data-testid': testid } : {}, value)];
}

function figure(label, value, testid) {
  return h('div', { class: 'figure' }, h('div', { class: 'figure-label' }, label),
    h('div', { class: 'figure-value', 'data-testid': testid }, value));
}

function chips(values, cls = 'chip') {
  if (!values.length) return h('span', { class: 'muted' }, 'none');
  return values.map((v) => h('span', { class: cls }, v));
}

function renderSummary(s) {
  $('#c360-id').textContent = s.customer_id;
  const status = $('#c360-status');
  status.textContent = s.status;
  status.className = `badge badge-${s.status}`;
  $('#c360-figures').replaceChildren(
    figure('Orders 注文数', fmt.int(s.orders), 'c360-orders'),
    figure('Revenue 売上', fmt.yen(s.revenue), 'c360-revenue'),
    figure('Points ポイント', fmt.int(s.points), 'c360-points'),
    figure('Events', fmt.int(s.events), 'c360-events'),
    figure('Rank 会員ランク', s.rank ?? '—', 'c360-rank'),
    figure('Tickets 問い合わせ', fmt.int(s.tickets?.total ?? 0), 'c360-tickets'),
    figure('Open tickets 対応中', fmt.int(s.tickets?.open ?? 0), 'c360-open-tickets'),
  );
  const consents = Object.entries(s.consents).map(([k, v]) =>
    h('span', { class: `chip ${v ? 'chip-on' : 'chip-off'}`, title: v ? 'consented' : 'no consent' }, `${v ? '✓' : '✗'} ${k}`),
  );
  const a = s.attributes;
  $('#c360-facts').replaceChildren(
    ...fact('Channels', chips(s.channels.map((c) => CHANNEL_LABELS[c] || c)), 'c360-channels'),
    ...fact('First event', `${instantJst(s.first_event)} JST`, 'c360-first-event'),
    ...fact('Last event', `${instantJst(s.last_event)} JST`, 'c360-last-event'),
    ...fact('Identifiers', fmt.int(s.keys), 'c360-keys'),
    ...fact('Merged into', s.merged_into ? h('a', { href: `#/customer/${s.merged_into}`, class: 'mono' }, s.merged_into) : '—'),
    ...fact('Gender', a.gender ?? '—'),
    ...fact('Birth year', a.birth_year ?? '—'),
    ...fact('Prefecture', a.prefecture ?? '—'),
    ...fact('Tags', chips(a.tags || [])),
    ...fact('Consents', consents),
  );
}

function amountCell(e) {
  if (e.event_type.startsWith('order.')) return fmt.yen(e.amount);
  if (e.event_type === 'member.points_changed') return `${e.amount > 0 ? '+' : ''}${fmt.int(e.amount)} pt`;
  return e.amount ? fmt.int(e.amount) : '';
}

function prettyPayload(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return String(text ?? '');
  }
}

function timelineRows(events) {
  return events.map((e) =>
    h(
      'tr',
      { 'data-testid': 'timeline-row', 'data-event-id': e.event_id, 'data-event-type': e.event_type },
      h('td', { class: 'nowrap' }, instantJst(e.occurred_at)),
      h('td', {}, h('code', {}, e.event_type)),
      h('td', {}, CHANNEL_LABELS[e.channel] || e.channel || ''),
      h('td', {}, e.kind || ''),
      h('td', {}, e.store_id || ''),
      h('td', { class: 'mono' }, e.order_id || ''),
      h('td', { class: 'num', 'data-testid': 'timeline-amount' }, amountCell(e)),
      h('td', {}, e.payload && e.payload !== '{}'
        ? h('details', {}, h('summary', {}, 'payload'), h('pre', {}, prettyPayload(e.payload)))
        : ''),
    ),
  );
}

async function loadCustomer(id) {
  const gen = ++customerGeneration;
  clearError();
  $('#customer-empty').hidden = true;
  $('#customer-panel').hidden = false;
  $('#customer-search-input').value = id;
  document.body.dataset.customer = 'loading';
  setState($('#customer-summary'), 'loading');
  setState($('#timeline'), 'loading');
  $('#c360-id').textContent = id;
  $('#c360-figures').replaceChildren();
  $('#c360-facts').replaceChildren();
  $('#c360-status').textContent = '';
  $('#timeline tbody').replaceChildren();
  $('#timeline-more').hidden = true;
  timelineState.id = id;
  const path = `customers/${encodeURIComponent(id)}`;
  const [summary, timeline] = await Promise.allSettled([
    api(path),
    api(`${path}/timeline`, { limit: timelineState.limit }),
  ]);
  if (gen !== customerGeneration) return;
  let failed = null;
  if (summary.status === 'fulfilled') {
    renderSummary(summary.value);
    setState($('#customer-summary'), 'ready');
  } else if (summary.reason.status === 404) {
    setState($('#customer-summary'), 'not-found');
    $('#c360-status').textContent = 'not found';
    $('#c360-status').className = 'badge badge-erased';
    $('#c360-figures').replaceChildren(
      h('p', { class: 'muted', 'data-testid': 'customer-not-found' }, 'No events or profile for this customer.'),
    );
  } else {
    setState($('#customer-summary'), 'error');
    failed = summary.reason;
  }
  if (timeline.status === 'fulfilled') {
    const events = timeline.value.events;
    $('#timeline tbody').replaceChildren(...timelineRows(events));
    if (!events.length) {
      $('#timeline tbody').append(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No events.')));
    }
    timelineState.oldest = events.length ? events[events.length - 1].occurred_at : null;
    timelineState.oldestId = events.length ? events[events.length - 1].event_id : null;
    $('#timeline-more').hidden = events.length < timelineState.limit;
    setState($('#timeline'), 'ready');
  } else {
    setState($('#timeline'), 'error');
    failed = failed || timeline.reason;
  }
  if (failed) showError(failed);
  document.body.dataset.customer = failed ? 'error' : 'ready';
}

async function loadOlderEvents() {
  const id = timelineState.id;
  if (!id || !timelineState.oldest) return;
  try {
    const data = await api(`customers/${encodeURIComponent(id)}/timeline`, {
      limit: timelineState.limit, before: timelineState.oldest, before_event: timelineState.oldestId,
    });
    if (timelineState.id !== id) return;
    $('#timeline tbody').append(...timelineRows(data.events));
    timelineState.oldest = data.events.length ? data.events[data.events.length - 1].occurred_at : null;
    timelineState.oldestId = data.events.length ? data.events[data.events.length - 1].event_id : null;
    $('#timeline-more').hidden = data.events.length < timelineState.limit;
  } catch (err) {
    showError(err);
  }
}

// -- routing -----------------------------------------------------------------------------------

function show(view) {
  $('#view-overview').hidden = view !== 'overview';
  $('#view-customer').hidden = view !== 'customer';
  for (const tab of document.querySelectorAll('.tab')) {
    tab.classList.toggle('active', tab.dataset.view === view);
  }
}

function route() {
  const hash = location.hash || '#/';
  const m = hash.match(/^#\/customer\/([^/?#]+)/);
  if (m) {
    show('customer');
    loadCustomer(decodeURIComponent(m[1]).trim());
  } else if (hash.startsWith('#/customer')) {
    show('customer');
    customerGeneration += 1; // a load still under way no longer counts
    timelineState.id = null;
    $('#customer-empty').hidden = false;
    $('#customer-panel').hidden = true;
    $('#timeline tbody').replaceChildren();
    document.body.dataset.customer = 'idle';
    clearError();
  } else {
    show('overview');
    if (overviewLoadedFor !== JSON.stringify(controls())) loadOverview();
  }
}

function reloadCurrent() {
  if (location.hash.startsWith('#/customer/')) route();
  else if (!$('#view-overview').hidden) loadOverview();
}

// -- start -------------------------------------------------------------------------------------

function start() {
  if (!window.echarts) {
    showError(new Error('the chart library (static/vendor/echarts.min.js) did not load'));
  }
  const key = $('#api-key');
  key.value = apiKey();
  key.addEventListener('change', () => {
    const value = key.value.trim();
    if (value) localStorage.setItem(KEY_STORE, value);
    else {
      localStorage.removeItem(KEY_STORE);
      key.value = DEFAULT_KEY;
    }
    reloadCurrent();
  });

  buildTiles();
  defaultPeriod();
  const form = $('#controls');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    loadOverview();
  });
  for (const id of ['#period-start', '#period-to', '#channel', '#interval']) {
    $(id).addEventListener('change', () => loadOverview());
  }

  $('#customer-search').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('#customer-search-input').value.trim();
    if (id) location.hash = `#/customer/${encodeURIComponent(id)}`;
  });
  $('.banner-close').addEventListener('click', clearError);
  $('#members-prev').addEventListener('click', () => openMembers(members.segment, members.offset - members.limit));
  $('#members-next').addEventListener('click', () => openMembers(members.segment, members.offset + members.limit));
  $('#members-close').addEventListener('click', () => {
    members.segment = null;
    $('#segment-members').hidden = true;
  });
  $('#timeline-more').addEventListener('click', loadOlderEvents);

  window.addEventListener('hashchange', route);
  route();
  if (location.hash.startsWith('#/customer')) loadStatus().catch(() => {}); // the overview loads it otherwise
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
