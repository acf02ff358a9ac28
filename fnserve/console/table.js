// table.js — a table whose rows are kept by key and updated in place: on each poll only the cells whose
// text changed are touched, so a list of a thousand functions refreshes every two seconds without
// rebuilding the DOM (focus, selection and scroll position stay where they were). New rows are clones
// of one prototype row, added through a DocumentFragment.

import { h, setAttr } from "./dom.js";

/**
 * columns: [{id, label, text(row) → string, href?(row), title?(row), cls?(row) → class of the cell,
 *            num?: true (right-aligned), hint? (the header's title), build?(row) → Node, sig?(row) → string (build again when it
 *            changes)}]
 * options: {key(row) → string, testid (each row's data-testid), rowData?(row) → {name: value} data-*,
 *           caption?, empty (text shown with no rows), fixed (a grid of rows, each column's ``width``
 *           set: a long table is laid out from its first row, not from all of them)}
 */
export class KeyedTable {
  constructor(columns, { key, testid = "row", rowData, caption, empty = "Nothing here yet.", fixed = false }) {
    this.columns = columns;
    this.key = key;
    this.rowData = rowData;
    this.rows = new Map();
    this.body = h("tbody");
    // A fixed table is laid out as a grid of rows, each row a grid of the columns' widths, so that the
    // browser lays out and paints only the rows on screen (content-visibility: auto, console.css): a
    // thousand rows of a real table are measured together, every one of them, on each change. Its table
    // roles are said explicitly, since a table displayed as a grid may lose them.
    const role = (name) => (fixed ? name : null);
    this.emptyRow = h("tr", { class: "empty", role: role("row") },
      h("td", { colspan: columns.length, role: role("cell") }, empty));
    this.prototype = h("tr", { "data-testid": testid, role: role("row") }, columns.map((c) => h("td", {
      "data-col": c.id, class: c.num ? "num" : null, role: role("cell") }, c.href ? h("a", { href: "#" }) : null)));
    if (fixed) this.body.setAttribute("role", "rowgroup");
    this.table = h("table", { class: fixed ? "fixed" : null, role: role("table") },
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h("thead", { role: role("rowgroup") }, h("tr", { role: role("row") }, columns.map((c) => h("th", {
        scope: "col", class: c.num ? "num" : null, title: c.hint, role: role("columnheader") }, c.label)))),
      this.body);
    if (fixed) this.table.style.setProperty("--columns", columns.map((c) => c.width || "minmax(8rem, 1fr)").join(" "));
    this.element = h("div", { class: "table-wrap" }, this.table);
  }

  _fill(cell, row) {
    const { td, column } = cell;
    if (column.build) {
      const sig = column.sig ? column.sig(row) : "";
      if (sig !== cell.value) {
        cell.value = sig;
        td.replaceChildren(column.build(row));
      }
    } else {
      const text = String(column.text(row));
      if (text !== cell.value) {
        cell.value = text;
        (cell.link || td).textContent = text;
      }
      if (cell.link) {
        const href = column.href(row);
        if (href !== cell.href) {
          cell.href = href;
          cell.link.setAttribute("href", href);
        }
      }
    }
    if (column.title) setAttr(td, "title", column.title(row) || null);
    if (column.cls) {
      const cls = (column.num ? "num " : "") + (column.cls(row) || "");
      if (cls !== cell.cls) {
        cell.cls = cls;
        td.className = cls;
      }
    }
  }

  _row() {
    const tr = this.prototype.cloneNode(true);
    const cells = this.columns.map((column, i) => {
      const td = tr.children[i];
      return { td, column, link: column.href ? td.firstChild : null, value: undefined, href: undefined, cls: undefined };
    });
    return { tr, cells, data: {} };
  }

  _data(record, row) {
    if (!this.rowData) return;
    for (const [name, value] of Object.entries(this.rowData(row))) {
      const text = value === null || value === undefined ? "" : String(value);
      if (record.data[name] !== text) {
        record.data[name] = text;
        record.tr.setAttribute(`data-${name}`, text);
      }
    }
  }

  /** Show ``list`` (in its order): rows kept by key, changed cells updated, others added or removed. */
  update(list) {
    const seen = new Set();
    const fragment = this.rows.size === 0 ? document.createDocumentFragment() : null;
    let previous = null;
    for (const row of list) {
      const id = String(this.key(row));
      if (seen.has(id)) continue;
      seen.add(id);
      let record = this.rows.get(id);
      if (!record) {
        record = this._row();
        this.rows.set(id, record);
      }
      for (const cell of record.cells) this._fill(cell, row);
      this._data(record, row);
      if (fragment) {
        fragment.appendChild(record.tr);
      } else {
        const want = previous ? previous.nextSibling : this.body.firstChild;
        if (want !== record.tr) this.body.insertBefore(record.tr, want);
      }
      previous = record.tr;
    }
    for (const [id, record] of this.rows) {
      if (!seen.has(id)) {
        record.tr.remove();
        this.rows.delete(id);
      }
    }
    if (fragment) this.body.replaceChildren(fragment);
    if (this.rows.size === 0 && !this.emptyRow.isConnected) this.body.appendChild(this.emptyRow);
    if (this.rows.size > 0 && this.emptyRow.isConnected) this.emptyRow.remove();
  }
}
