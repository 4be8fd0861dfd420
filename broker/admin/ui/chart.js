// Line charts on <canvas> for the overview: a few series over a sliding
// window of samples, y axis from 0 to a rounded maximum, a legend.

// niceStep rounds v up to 1, 2 or 5 times a power of ten, so grid labels
// read well.
function niceStep(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5]) {
    if (v <= m * p) return m * p;
  }
  return 10 * p;
}

// fmt shortens large numbers for axis labels: 1500 -> 1.5k.
export function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return +(v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return +(v / 1e3).toFixed(1) + "k";
  return String(+v.toFixed(a < 10 && a % 1 ? 1 : 0));
}

// drawChart draws series ([{label, color, values: [number|null]}]), newest
// last, one sample every period seconds, into canvas, sized to its CSS box.
// The x axis spans the samples there are, at least minSpan and at most
// capacity of them. integer keeps grid steps whole (counts of things).
export function drawChart(canvas, series, { capacity, minSpan = 20, period = 1, unit, integer = false }) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (w === 0 || h === 0) return; // not laid out (page hidden)
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(canvas);
  const fg = style.color || "#333";
  const left = 48, right = 8, top = 24, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;

  let top0 = 0, n = 0;
  for (const s of series) {
    n = Math.max(n, s.values.length);
    for (const v of s.values) if (v !== null && v > top0) top0 = v;
  }
  let stepY = top0 > 0 ? niceStep(top0 / 4) : 1;
  if (integer) stepY = Math.max(1, Math.round(stepY));
  const lines = Math.max(1, Math.ceil(top0 / stepY));
  const max = stepY * lines;
  const span = Math.min(capacity, Math.max(minSpan, n));

  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let i = 0; i <= lines; i++) {
    const y = top + ph - (ph * i) / lines;
    ctx.strokeStyle = "rgba(128,128,128,0.25)";
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(left + pw, Math.round(y) + 0.5);
    ctx.stroke();
    ctx.fillStyle = fg;
    ctx.fillText(fmt(stepY * i), left - 6, y);
  }
  ctx.textAlign = "left";
  ctx.fillText(unit, 4, 10);
  ctx.textBaseline = "alphabetic";
  ctx.fillText("−" + Math.round((span - 1) * period) + " s", left, h - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", left + pw, h - 4);
  ctx.textBaseline = "middle";

  // Legend, right-aligned on the top line.
  let x = left + pw;
  ctx.textAlign = "right";
  for (const s of [...series].reverse()) {
    const last = s.values.length ? s.values[s.values.length - 1] : null;
    const text = s.label + (last === null ? "" : " " + fmt(last));
    ctx.fillStyle = fg;
    ctx.fillText(text, x, 10);
    x -= ctx.measureText(text).width + 6;
    ctx.fillStyle = s.color;
    ctx.fillRect(x - 10, 6, 10, 8);
    x -= 20;
  }

  const step = pw / Math.max(1, span - 1);
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  series.forEach((s, k) => {
    ctx.strokeStyle = s.color;
    // Later series dashed: equal rates (every message in goes out once)
    // would otherwise hide the first line.
    ctx.setLineDash(k ? [6, 4] : []);
    ctx.beginPath();
    let pen = false;
    const off = span - s.values.length;
    s.values.forEach((v, i) => {
      if (v === null || off + i < 0) { pen = false; return; }
      const px = left + (off + i) * step, py = top + ph - (ph * v) / max;
      if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      pen = true;
    });
    ctx.stroke();
  });
  ctx.setLineDash([]);
}
