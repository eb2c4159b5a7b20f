// mrctprep group report: sortable and filterable tables, and QC rating exported as a TSV.
// Everything stays in this page: no server, no network, no storage beyond the open page.
(function () {
  'use strict';

  // --- sorting: click a column header; numbers sort as numbers, 'n/a' last ---
  function cellValue(row, index) {
    return row.cells[index] ? row.cells[index].textContent.trim() : '';
  }
  function compare(a, b) {
    var x = parseFloat(a), y = parseFloat(b);
    var numeric = /^-?[0-9.]+(e[-+]?[0-9]+)?$/i;
    if (numeric.test(a) && numeric.test(b)) { return x - y; }
    if (a === 'n/a' || a === '') { return b === 'n/a' || b === '' ? 0 : 1; }
    if (b === 'n/a' || b === '') { return -1; }
    return a.localeCompare(b);
  }
  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var ascending = header.getAttribute('data-order') !== 'ascending';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var order = compare(cellValue(r1, index), cellValue(r2, index));
      return ascending ? order : -order;
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.removeAttribute('data-order');
    });
    header.setAttribute('data-order', ascending ? 'ascending' : 'descending');
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.title = 'click to sort';
      th.addEventListener('click', function () { sortBy(table, index, th); });
    });
  });

  // --- filtering: rows that contain the typed text (any column) stay visible ---
  document.querySelectorAll('input.filter').forEach(function (input) {
    input.addEventListener('input', function () {
      var table = document.getElementById(input.getAttribute('data-table'));
      var needle = input.value.trim().toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        row.hidden = needle !== '' && row.textContent.toLowerCase().indexOf(needle) < 0;
      });
    });
  });

  // --- QC rating: one entry per subject (session) and pipeline, kept while the page is open ---
  var ratings = {};
  var count = document.getElementById('rating-count');
  function remember(row) {
    var checked = row.querySelector('input[type=radio]:checked');
    var comment = row.querySelector('input.comment').value;
    ratings[row.getAttribute('data-key')] = {
      participant_id: row.getAttribute('data-participant'),
      session_id: row.getAttribute('data-session'),
      pipeline: row.getAttribute('data-pipeline'),
      rating: checked ? checked.value : 'n/a',
      comment: comment,
      timestamp: new Date().toISOString()
    };
    count.textContent = String(Object.keys(ratings).length);
  }
  document.querySelectorAll('tr.rating-row').forEach(function (row) {
    row.querySelectorAll('input').forEach(function (input) {
      input.addEventListener(input.type === 'radio' ? 'change' : 'input', function () {
        remember(row);
      });
    });
  });
  function cell(text) { return String(text).replace(/[\t\r\n]+/g, ' '); }
  function ratingsTsv() {
    var columns = ['participant_id', 'session_id', 'pipeline', 'rating', 'comment', 'timestamp'];
    var lines = [columns.join('\t')];
    document.querySelectorAll('tr.rating-row').forEach(function (row) {
      var entry = ratings[row.getAttribute('data-key')];
      if (entry) {
        lines.push(columns.map(function (name) { return cell(entry[name]); }).join('\t'));
      }
    });
    return lines.join('\n') + '\n';
  }
  document.getElementById('export-ratings').addEventListener('click', function () {
    var blob = new Blob([ratingsTsv()], {type: 'text/tab-separated-values'});
    var link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'group_qc_ratings.tsv';
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 5000);
  });
}());
