// A sortable, filterable table. Cells are rendered by column functions that return strings or
// Nodes built with `h`, so guest data can only ever become text.
import { h, replace } from './dom.js';

/**
 * @param {{
 *   columns: { key: string, label: string, value: (row) => any, cell?: (row) => any,
 *              numeric?: boolean, class?: string }[],
 *   rowKey: (row) => string,
 *   searchText?: (row) => string,
 *   initialSort?: { key: string, desc?: boolean },
 *   empty?: string,
 *   name?: string,
 *   rowProps?: (row) => object,
 * }} spec
 */
export function createTable(spec) {
  let rows = [];
  let filter = '';
  let sort = spec.initialSort ?? { key: spec.columns[0].key, desc: false };
  const headRow = h('tr');
  const body = h('tbody');
  const count = h('span', { class: 'count' });
  const table = h('table', { class: 'data', dataset: { table: spec.name ?? '' } }, h('thead', null, headRow), body);
  const el = h('div', { class: 'table-wrap' }, table);

  function renderHead() {
    replace(
      headRow,
      spec.columns.map((col) => {
        const active = sort.key === col.key;
        return h(
          'th',
          {
            class: [col.numeric ? 'num' : '', active ? 'sorted' : ''].join(' ').trim(),
            scope: 'col',
            'aria-sort': active ? (sort.desc ? 'descending' : 'ascending') : 'none',
          },
          h(
            'button',
            {
              type: 'button',
              class: 'sort',
              onClick: () => {
                sort = active ? { key: col.key, desc: !sort.desc } : { key: col.key, desc: !!col.numeric };
                render();
              },
            },
            col.label,
            active ? (sort.desc ? ' ▾' : ' ▴') : '',
          ),
        );
      }),
    );
  }

  function visibleRows() {
    const needle = filter.trim().toLowerCase();
    const matching = needle && spec.searchText
      ? rows.filter((row) => spec.searchText(row).toLowerCase().includes(needle))
      : rows.slice();
    const col = spec.columns.find((c) => c.key === sort.key) ?? spec.columns[0];
    const dir = sort.desc ? -1 : 1;
    matching.sort((a, b) => dir * compare(col.value(a), col.value(b)));
    return matching;
  }

  function render() {
    renderHead();
    const shown = visibleRows();
    if (!shown.length) {
      replace(body, h('tr', { class: 'empty' }, h('td', { colspan: spec.columns.length }, rows.length ? 'Nothing matches the filter.' : spec.empty ?? 'Nothing yet.')));
    } else {
      replace(
        body,
        shown.map((row) =>
          h(
            'tr',
            { dataset: { key: spec.rowKey(row) }, ...(spec.rowProps?.(row) ?? {}) },
            spec.columns.map((col) =>
              h('td', { class: [col.numeric ? 'num' : '', col.class ?? ''].join(' ').trim() || null, dataset: { col: col.key } }, (col.cell ?? col.value)(row)),
            ),
          ),
        ),
      );
    }
    count.textContent = rows.length === shown.length ? `${rows.length}` : `${shown.length} of ${rows.length}`;
  }

  render();
  return {
    el,
    count,
    setRows(next) {
      rows = next;
      render();
    },
    setFilter(text) {
      filter = text;
      render();
    },
    refresh: render,
  };
}

/** A search box wired to a table. */
export function filterInput(table, placeholder = 'Filter…') {
  return h('input', {
    type: 'search',
    class: 'filter',
    placeholder,
    'aria-label': placeholder,
    onInput: (e) => table.setFilter(e.target.value),
  });
}

function compare(a, b) {
  const aMissing = a === null || a === undefined || a === '';
  const bMissing = b === null || b === undefined || b === '';
  if (aMissing || bMissing) return aMissing === bMissing ? 0 : aMissing ? 1 : -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true, sensitivity: 'base' });
}
