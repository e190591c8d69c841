"""The style sheet and script a report page carries inline (no file or network fetched)."""

CSS = """
body { font: 14px/1.4 sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
dl.facts { display: grid; grid-template-columns: repeat(3, max-content minmax(6em, 26em));
  gap: 2px 10px; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table.images th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky;
  top: 0; }
table.images th[data-dir=asc]::after { content: " \\25b2"; }
table.images th[data-dir=desc]::after { content: " \\25bc"; }
table.images td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.images img { height: 48px; vertical-align: middle; }
section.image { border-top: 2px solid #ccc; margin-top: 1.5em; content-visibility: auto;
  contain-intrinsic-size: auto 1400px; }
.side { display: flex; gap: 12px; flex-wrap: wrap; }
.side figure { margin: 0; }
.side img { max-width: 256px; max-height: 256px; display: block; }
.view { overflow: auto; max-width: 100%; width: fit-content; max-height: 85vh; border: 1px solid #ccc; }
.stack { position: relative; }
.stack img { position: absolute; left: 0; top: 0; width: 100%; height: 100%;
  image-rendering: pixelated; }
.split { width: 100%; max-width: 100%; }
.plots img { display: block; margin: 6px 0; max-width: 100%; }
.smoke { color: #b00; font-weight: bold; }
pre { background: #f8f8f8; padding: 6px; overflow: auto; max-height: 30em; }
"""

# Sortable image table (numbers by value, missing values last in both directions) and the
# before/after sliders (the "after" image is clipped left of the split; the "before" image
# can be the input or the reference).
JS = """
document.querySelectorAll('table.images th').forEach((th, col) => {
  th.addEventListener('click', () => {
    const body = th.closest('table').tBodies[0];
    const dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
    th.parentNode.querySelectorAll('th').forEach(h => delete h.dataset.dir);
    th.dataset.dir = dir;
    const sign = dir === 'asc' ? 1 : -1;
    const value = row => row.cells[col].dataset.v ?? row.cells[col].textContent;
    const rows = [...body.rows];
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (th.dataset.type !== 'num') return sign * x.localeCompare(y);
      const p = x === '' ? NaN : Number(x), q = y === '' ? NaN : Number(y);
      if (Number.isNaN(p) || Number.isNaN(q)) return Number.isNaN(p) - Number.isNaN(q);
      return sign * (p - q);
    });
    body.append(...rows);
  });
});
document.querySelectorAll('.cmp').forEach(cmp => {
  const range = cmp.querySelector('input.split');
  const after = cmp.querySelector('img.after');
  const move = () => { after.style.clipPath = `inset(0 0 0 ${range.value}%)`; };
  range.addEventListener('input', move);
  move();
  const pick = cmp.querySelector('select');
  if (pick) pick.addEventListener('change', () => {
    cmp.querySelector('img.before').src = pick.value;
  });
});
"""
