// Time-series charts (uPlot) with unit-aware axes, sized to their container.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { h } from './dom.js';
import * as fmt from './format.js';

const MIN_SPAN_SECONDS = 120;

export const PALETTE = ['#4ea1ff', '#f5a524', '#3ccf91', '#e5484d', '#a78bfa', '#22d3ee', '#f472b6', '#a3e635'];

/** Binary steps (1, 2, 4 … 512 × 1024^k) so byte axes read 512 MiB, 1 GiB, 2 GiB. */
const BINARY_INCREMENTS = Array.from({ length: 6 }, (_, k) => [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].map((m) => m * 1024 ** k)).flat();

const UNIT_FORMAT = {
  percent: (v) => (v === null || v === undefined ? '—' : `${v.toFixed(v < 10 ? 1 : 0)} %`),
  bytes: (v) => fmt.bytes(v),
  rate: (v) => fmt.rate(v),
};

/**
 * A live chart.
 * @param {{ title: string, unit: 'percent'|'bytes'|'rate', series: { label: string, color?: string, dash?: number[], fill?: boolean }[],
 *           range: () => [number, number], yMax?: number, name: string }} spec
 */
export function createChart(spec) {
  const format = UNIT_FORMAT[spec.unit];
  const plotHost = h('div', { class: 'plot' });
  // data-points / data-live-points / data-last-at let tests (and curious operators) see what the
  // chart holds without reading the canvas.
  const el = h('section', { class: 'chart card', dataset: { chart: spec.name, points: '0', livePoints: '0', lastAt: '' } },
    h('header', null, h('h3', null, spec.title), h('span', { class: 'unit' }, unitLabel(spec.unit))),
    plotHost);
  let data = [[], ...spec.series.map(() => [])];

  // A VM seen for the first time has seconds of data in a range of minutes or days: until the
  // data fills the range, show from its first point (at least MIN_SPAN_SECONDS wide).
  function visibleRange() {
    const [lo, hi] = spec.range();
    const first = data[0][0];
    if (first === undefined || first <= lo) return [lo, hi];
    return [Math.max(lo, Math.min(first, hi - MIN_SPAN_SECONDS)), hi];
  }
  let plot = null;
  let width = 0;

  const options = (w) => ({
    width: w,
    height: 190,
    legend: { show: true, live: true },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true, range: () => visibleRange() },
      y: {
        range: (u, min, max) => {
          const top = spec.yMax ?? (max > 0 ? max * 1.15 : 1);
          return [0, Math.max(top, spec.yMax ?? 0)];
        },
      },
    },
    axes: [
      { stroke: '#8b95a7', grid: { stroke: '#263041', width: 1 }, ticks: { stroke: '#263041' } },
      {
        stroke: '#8b95a7',
        grid: { stroke: '#263041', width: 1 },
        ticks: { stroke: '#263041' },
        size: 78,
        incrs: spec.unit === 'percent' ? undefined : BINARY_INCREMENTS,
        values: (u, values) => values.map(format),
      },
    ],
    series: [
      { value: (u, v) => (v === null ? '—' : new Date(v * 1000).toLocaleString()) },
      ...spec.series.map((s, i) => ({
        label: s.label,
        stroke: s.color ?? PALETTE[i % PALETTE.length],
        width: 1.5,
        dash: s.dash,
        fill: s.fill ? `${s.color ?? PALETTE[i % PALETTE.length]}22` : undefined,
        points: { show: false },
        value: (u, v) => format(v),
      })),
    ],
  });

  function ensurePlot() {
    const w = Math.floor(plotHost.clientWidth);
    if (w <= 0) return;
    if (!plot) {
      width = w;
      plot = new uPlot(options(w), data, plotHost);
    } else if (w !== width) {
      width = w;
      plot.setSize({ width: w, height: 190 });
    }
  }

  const resize = new ResizeObserver(() => ensurePlot());
  resize.observe(plotHost);

  let livePoints = 0;
  function publish() {
    const xs = data[0];
    el.dataset.points = String(xs.length);
    el.dataset.livePoints = String(livePoints);
    el.dataset.lastAt = xs.length ? new Date(xs[xs.length - 1] * 1000).toISOString() : '';
    if (plot) plot.setData(data);
    else ensurePlot();
  }

  return {
    el,
    /** Replace all points: xs in epoch seconds, one array per series. */
    set(xs, ...ys) {
      // Copies: callers hand the same `xs` to several charts, and `push` appends in place —
      // on a shared array the first chart's push made every other chart's next point look
      // old, so only that chart moved (issue 15, item 13).
      data = [xs.slice(), ...ys.map((y) => y.slice())];
      publish();
    },
    /** Add one point and drop the ones older than `keepFrom` (epoch seconds). */
    push(x, values, keepFrom) {
      const xs = data[0];
      if (xs.length && x <= xs[xs.length - 1]) return;
      xs.push(x);
      values.forEach((v, i) => data[i + 1].push(v));
      let drop = 0;
      while (drop < xs.length - 1 && xs[drop] < keepFrom) drop += 1;
      if (drop) data = data.map((col) => col.slice(drop));
      livePoints += 1;
      publish();
    },
    lastX() {
      const xs = data[0];
      return xs.length ? xs[xs.length - 1] : -Infinity;
    },
    /** Redraw with the current range (the window slides with time). */
    redraw() {
      if (plot) plot.setData(data);
    },
    destroy() {
      resize.disconnect();
      plot?.destroy();
    },
  };
}

function unitLabel(unit) {
  return { percent: 'percent', bytes: 'bytes', rate: 'bytes per second' }[unit];
}
