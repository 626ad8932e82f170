#!/usr/bin/env python3
"""Draws the benchmark tables of docs/benchmarks.md as SVG charts in docs/charts/.

The tables are the results (compare.sh prints them; they are pasted into the document with
the run's date), so the charts are drawn from exactly the figures beside them: run this after
updating a table and commit both. No dependencies beyond Python 3.

    python3 benches/charts.py            # rewrites docs/charts/*.svg
    python3 benches/charts.py --check    # exits 1 if a committed chart is out of date

Each chart is one table: a group of horizontal bars per figure (row), one bar per broker or
build (column), each group scaled to its own largest value, the value written at the bar's
end. Rows whose unit is a time or a size are marked "lower is better". A cost-curve table
(columns are sizes, rows "figure — series") is drawn as small line charts, one per figure.
"""
import re
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "docs" / "charts"

# (heading the table is under, output file, columns to draw, title)
CHARTS = [
    ("## Latest table", "latest.svg", ["tessera", "mosquitto", "rumqttd", "relay"],
     "Tessera against mosquitto, rumqttd and a raw TCP relay (medians of 3 rounds)"),
    ("### What the guarantee costs", "durable.svg", ["tessera (durable)", "volatile", "mosquitto"],
     "Durable state: acknowledged only once on disk, against memory only and mosquitto"),
    ("## Architecture change (issue 8): before and after", "architecture.svg", ["before", "after"],
     "The architecture change (issue 8), before and after"),
    ("### Nothing else got slower", "durable-regression.svg", ["issue 8", "issue 9"],
     "Clean-session figures, issue 8 build against issue 9 build"),
    ("## Hardening (issue 10): before and after", "hardening.svg", ["before", "issue 10"],
     "Hardening (issue 10), before and after"),
    ("## Operations (issue 11): before and after", "operations.svg", ["before", "issue 11"],
     "Operations (issue 11): metrics counters, before and after"),
    ("## The cluster at one edge (issue 18): before and after", "cluster-edge.svg",
     ["before", "issue 18"], "The cluster at one edge (issue 18), before and after"),
    ("## TLS and client certificates (issue 19)", "tls.svg", ["tessera", "mosquitto"],
     "TLS handshakes with and without client certificates, and an mTLS connection's memory"),
    ("## Tokens from other issuers (issue 20)", "issuers.svg",
     ["own token", "RS256 reconnecting", "ES256 reconnecting", "RS256 first login",
      "ES256 first login", "mosquitto password"],
     "Connect storms with a provider's JWTs, own tokens and mosquitto's password file"),
]
# (heading, output file, title): tables whose columns are sizes (10k, 100k, 1M) and whose rows
# are "figure — series"; drawn as one small line chart per figure, a line per series.
CURVES = [
    ("## Cost curves (issue 23)", "scale.svg",
     "Cost curves: what one entry or one operation costs as the state grows"),
]
COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#718096"]
LOWER = re.compile(r"\((us|µs|s|KiB|bytes)\b|p99|p50|latency|memory|instructions|RSS", re.I)


def tables(text):
    """Each heading's first table: {heading: (header cells, rows of cells)}."""
    out, heading, lines = {}, None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.strip()
        elif line.startswith("|") and heading and heading not in out:
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r"-+", c) for c in cells):
                    rows.append(cells)
                i += 1
            out[heading] = (rows[0], rows[1:])
            continue
        i += 1
    return out


def number(cell):
    """The first number of a cell ("1,598", "126 / 286", "30.09*", "**0.42**"), or None."""
    m = re.search(r"\d[\d,]*(\.\d+)?", cell.replace("**", ""))
    return float(m.group(0).replace(",", "")) if m else None


def fmt(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def chart(title, header, rows, columns):
    idx = [header.index(c) for c in columns if c in header]
    names = [header[i] for i in idx]
    bar, gap, label_w, plot_w = 14, 10, 330, 420
    groups = []
    for r in rows:
        vals = [number(r[i]) if i < len(r) else None for i in idx]
        if any(v is not None for v in vals):
            groups.append((r[0], vals))
    height = 70 + sum(len(names) * bar + gap for _ in groups) + 20
    width = label_w + plot_w + 110
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    x = 10
    for k, n in enumerate(names):
        svg.append(f'<rect x="{x}" y="32" width="10" height="10" fill="{COLORS[k % len(COLORS)]}"/>')
        svg.append(f'<text x="{x + 14}" y="41">{escape(n)}</text>')
        x += 24 + 7 * len(n)
    y = 60
    for name, vals in groups:
        top = max(v for v in vals if v is not None) or 1
        label = re.sub(r"\*\*", "", name)
        if LOWER.search(label):
            label += " — lower is better"
        svg.append(f'<text x="{label_w - 8}" y="{y + len(names) * bar / 2 + 4}" text-anchor="end">'
                   f'{escape(label[:60])}</text>')
        for k, v in enumerate(vals):
            if v is not None:
                w = max(1.0, plot_w * v / top)
                svg.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 2}" '
                           f'fill="{COLORS[k % len(COLORS)]}"/>')
                svg.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4}">{fmt(v)}</text>')
            y += bar
        y += gap
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def curves(title, header, rows):
    """Small multiples: per figure, its series against the sizes (evenly spaced: they grow
    tenfold), each panel scaled from 0 to its largest value."""
    sizes = header[1:]
    panels = {}
    for r in rows:
        name, _, series = r[0].partition(" — ")
        vals = [number(c) if c.strip() != "-" else None for c in r[1:]]
        panels.setdefault(name, []).append((series or name, vals))
    cols, pw, ph = 3, 250, 110
    cell_w, cell_h = pw + 60, ph + 70
    n_rows = (len(panels) + cols - 1) // cols
    width, height = cols * cell_w + 20, 50 + n_rows * cell_h
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    series_names = []
    for lines in panels.values():
        for s, _ in lines:
            if s not in series_names:
                series_names.append(s)
    x = 10
    for k, n in enumerate(series_names):
        svg.append(f'<rect x="{x}" y="30" width="10" height="10" fill="{COLORS[k % len(COLORS)]}"/>')
        svg.append(f'<text x="{x + 14}" y="39">{escape(n)}</text>')
        x += 24 + 6 * len(n)
    for i, (name, lines) in enumerate(panels.items()):
        ox = 10 + (i % cols) * cell_w + 40
        oy = 50 + (i // cols) * cell_h + 20
        top = max((v for _, vals in lines for v in vals if v is not None), default=0) or 1
        svg.append(f'<text x="{ox - 30}" y="{oy - 6}" font-weight="bold">{escape(name[:52])}</text>')
        svg.append(f'<line x1="{ox}" y1="{oy + ph}" x2="{ox + pw}" y2="{oy + ph}" stroke="#999"/>')
        svg.append(f'<line x1="{ox}" y1="{oy}" x2="{ox}" y2="{oy + ph}" stroke="#999"/>')
        step = pw / max(1, len(sizes) - 1) if len(sizes) > 1 else 0
        for j, size in enumerate(sizes):
            svg.append(f'<text x="{ox + j * step:.1f}" y="{oy + ph + 13}" text-anchor="middle">'
                       f'{escape(size)}</text>')
        for series, vals in lines:
            k = series_names.index(series)
            color = COLORS[k % len(COLORS)]
            pts = [(ox + j * step, oy + ph - ph * v / top, v)
                   for j, v in enumerate(vals) if v is not None]
            if len(pts) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
                svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y, v in pts:
                svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
                svg.append(f'<text x="{x + 4:.1f}" y="{y - 4:.1f}" fill="{color}">{fmt(v)}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main():
    found = tables(DOC.read_text())
    OUT.mkdir(exist_ok=True)
    stale = []
    jobs = [(h, f, lambda hd, rs, c=c, t=t: chart(t, hd, rs, c)) for h, f, c, t in CHARTS]
    jobs += [(h, f, lambda hd, rs, t=t: curves(t, hd, rs)) for h, f, t in CURVES]
    for heading, file, draw in jobs:
        match = next((h for h in found if h.startswith(heading)), None)
        if match is None:
            sys.exit(f"{DOC}: no table under {heading!r}")
        header, rows = found[match]
        svg = draw(header, rows)
        path = OUT / file
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != svg:
                stale.append(file)
        else:
            path.write_text(svg)
            print(f"wrote {path.relative_to(ROOT)} ({len(rows)} figures)")
    if stale:
        sys.exit("out of date (run python3 benches/charts.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
