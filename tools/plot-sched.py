#!/usr/bin/env python3
"""Plot the scheduler benchmark (mor-bench --sessions Markdown rows) as SVG: aggregate generated
tokens/s against the number of sessions, one line per mode (continuous, static, sequential),
one panel per model, depth distribution and thread count, four panels to a row.

    build/mor-bench ... --sessions 1,4,16,64 > sched.md
    python3 tools/plot-sched.py sched.md > docs/sched.svg      (or docs/PERFORMANCE.md itself)

A mode left out of a row ("-", e.g. --no-sequential) is left out of the plot. Standard library
only."""
import math
import sys

MODES = [("continuous", "#d62728"), ("static", "#1f77b4"), ("sequential", "#7f7f7f")]
PER_ROW = 4


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def rows(path):
    out = []
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) in (11, 12) and c[2].isdigit() and c[3].isdigit() and num(c[4]) is not None:
            out.append(((c[0], c[1], int(c[3])), int(c[2]), [num(c[4]), num(c[5]), num(c[6])]))
    return out


def short(depths):
    return depths.split(":")[0].split(" (")[0]


def main(argv):
    data = rows(argv[1])
    panels = []
    for key, _, _ in data:
        if key not in panels:
            panels.append(key)
    W, H, pad = 330, 280, 56
    ncol = min(PER_ROW, max(1, len(panels)))
    nrow = (len(panels) + PER_ROW - 1) // PER_ROW
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="11">' % (W * ncol, (H + 40) * max(1, nrow))]
    for pi, key in enumerate(panels):
        model, depths, threads = key
        pts = [(n, v) for k, n, v in data if k == key]
        xs = [math.log2(n) for n, _ in pts]
        ys = [y for _, v in pts for y in v if y is not None]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y1 = max(ys) * 1.1
        ox, oy = (pi % PER_ROW) * W, (pi // PER_ROW) * (H + 40)

        def X(v):
            return ox + pad + (v - x0) / (x1 - x0) * (W - 1.5 * pad)

        def Y(v):
            return oy + 34 + (1 - v / y1) * (H - pad)

        out.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (ox + 8, oy + 14, model.replace(".gguf", "")))
        out.append('<text x="%d" y="%d">%s, %d thread%s</text>'
                   % (ox + 8, oy + 27, short(depths), threads, "s" if threads > 1 else ""))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(0), X(x1), Y(0)))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(0), X(x0), Y(y1)))
        for n, _ in pts:
            out.append('<text x="%g" y="%g" text-anchor="middle">%d</text>' % (X(math.log2(n)), Y(0) + 14, n))
        for i in range(5):
            v = y1 * i / 4
            out.append('<text x="%g" y="%g" text-anchor="end">%.0f</text>' % (X(x0) - 4, Y(v) + 4, v))
        out.append('<text x="%g" y="%g" text-anchor="middle">sessions</text>' % ((X(x0) + X(x1)) / 2, Y(0) + 28))
        out.append('<text x="%g" y="%g" transform="rotate(-90 %g %g)" text-anchor="middle">generated tokens/s</text>'
                   % (ox + 14, Y(y1 / 2), ox + 14, Y(y1 / 2)))
        for mi, (name, col) in enumerate(MODES):
            p = sorted((math.log2(n), v[mi]) for n, v in pts if v[mi] is not None)
            if not p:
                continue
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                       % (col, " ".join("%g,%g" % (X(a), Y(b)) for a, b in p)))
            for a, b in p:
                out.append('<circle cx="%g" cy="%g" r="3" fill="%s"/>' % (X(a), Y(b), col))
            out.append('<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g">%s</text>'
                       % (X(x0) + 8, Y(y1) + 4 + 14 * mi, col, X(x0) + 22, Y(y1) + 13 + 14 * mi, name))
    out.append("</svg>")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
