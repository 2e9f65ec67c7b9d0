// The report page's two interactions, offline and without a library: tables marked
// data-sortable sort by a column when its header is clicked, and figures open large. The PDF
// (WeasyPrint runs no script) and a browser without scripts show the same page, unsorted.
(function () {
  "use strict";

  // A cell's value: its first number ("0.1049 ± 0.0123" -> 0.1049, "1,234" -> 1234), else
  // its text; cells without a number ("–", "not meaningful") sort after every number.
  function value(cell) {
    var text = cell ? cell.textContent.trim() : "";
    var m = text.replace(/,(?=\d{3})/g, "").replace(/\u2212/g, "-").match(/-?\d+(\.\d+)?(e-?\d+)?/);
    return m ? parseFloat(m[0]) : text;
  }

  function compare(a, b) {
    var na = typeof a === "number", nb = typeof b === "number";
    if (na && nb) return a - b;
    if (na !== nb) return na ? -1 : 1;
    return String(a).localeCompare(String(b));
  }

  function sortBy(table, column, th) {
    var body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var order = compare(value(r1.cells[column]), value(r2.cells[column]));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll("thead th[aria-sort]").forEach(function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  document.querySelectorAll("table[data-sortable]").forEach(function (table) {
    // Each header cell's column, counting the colspans and rowspans of the rows above it.
    var taken = [];
    Array.prototype.forEach.call(table.tHead.rows, function (row, r) {
      taken[r] = taken[r] || [];
      var column = 0;
      Array.prototype.forEach.call(row.cells, function (th) {
        while (taken[r][column]) column++;
        for (var i = 0; i < th.rowSpan; i++) {
          taken[r + i] = taken[r + i] || [];
          for (var j = 0; j < th.colSpan; j++) taken[r + i][column + j] = true;
        }
        if (th.colSpan === 1 && th.textContent.trim()) {
          var button = document.createElement("button");
          button.type = "button";
          button.className = "sort";
          button.title = "Sort by this column";
          while (th.firstChild) button.appendChild(th.firstChild);
          th.appendChild(button);
          var at = column;
          button.addEventListener("click", function () { sortBy(table, at, th); });
        }
        column += th.colSpan;
      });
    });
  });

  // Figures open large: a dialog with the image at its own size (at least the window's
  // width), scrolled within the dialog; Escape, the button or a click closes it.
  var dialog = document.createElement("dialog");
  dialog.className = "zoom";
  dialog.setAttribute("aria-label", "Enlarged figure");
  var close = document.createElement("button");
  close.type = "button";
  close.className = "close";
  close.textContent = "Close";
  var large = document.createElement("img");
  dialog.appendChild(close);
  dialog.appendChild(large);
  document.body.appendChild(dialog);
  dialog.addEventListener("click", function () { dialog.close(); });

  document.querySelectorAll("img.figure, img.reliability").forEach(function (img) {
    img.tabIndex = 0;
    img.setAttribute("role", "button");
    img.title = "Open large";
    img.setAttribute("aria-label", "Open large: " + img.alt);
    function open() {
      large.src = img.src;
      large.alt = img.alt;
      large.style.width = Math.max(img.naturalWidth, window.innerWidth - 32) + "px";
      dialog.showModal();
    }
    img.addEventListener("click", open);
    img.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
  });
})();
