#!/usr/bin/env python3
"""Plot the scheduler benchmark (mor-bench --sessions Markdown rows) as SVG: aggregate generated
tokens/s against the number of sessions, one line per mode (continuous, static, sequential),
one panel per model and thread count.

    build/mor-bench ... --sessions 1,4,16,64 > sched.md
    python3 tools/plot-sched.py sched.md > docs/sched.svg      (or docs/PERFORMANCE.md itself)

Standard library only."""
import math
import sys

MODES = [("continuous", "#d62728"), ("static", "#1f77b4"), ("sequential", "#7f7f7f")]


def rows(path):
    out = []
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) in (11, 12) and c[2].isdigit() and c[3].isdigit():
            try:
                out.append((c[0], int(c[3]), int(c[2]), float(c[4]), float(c[5]), float(c[6])))
            except ValueError:
                pass
    return out


def main(argv):
    data = rows(argv[1])
    panels = []
    for r in data:
        if (r[0], r[1]) not in panels:
            panels.append((r[0], r[1]))
    W, H, pad = 380, 300, 56
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="11">' % (W * max(1, len(panels)), H + 30)]
    for pi, (model, threads) in enumerate(panels):
        pts = [r for r in data if r[0] == model and r[1] == threads]
        xs = [math.log2(r[2]) for r in pts]
        ys = [v for r in pts for v in r[3:6]]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y1 = max(ys) * 1.1
        ox = pi * W

        def X(v):
            return ox + pad + (v - x0) / (x1 - x0) * (W - 1.6 * pad)

        def Y(v):
            return 24 + (1 - v / y1) * (H - pad)

        out.append('<text x="%d" y="14" font-weight="bold">%s, %d thread%s</text>'
                   % (ox + pad, model, threads, "s" if threads > 1 else ""))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(0), X(x1), Y(0)))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(0), X(x0), Y(y1)))
        for r in pts:
            out.append('<text x="%g" y="%g" text-anchor="middle">%d</text>' % (X(math.log2(r[2])), Y(0) + 14, r[2]))
        for i in range(5):
            v = y1 * i / 4
            out.append('<text x="%g" y="%g" text-anchor="end">%.0f</text>' % (X(x0) - 4, Y(v) + 4, v))
        out.append('<text x="%g" y="%g" text-anchor="middle">sessions</text>' % ((X(x0) + X(x1)) / 2, Y(0) + 28))
        out.append('<text x="%g" y="%g" transform="rotate(-90 %g %g)" text-anchor="middle">generated tokens/s '
                   '(all sessions)</text>' % (ox + 12, Y(y1 / 2), ox + 12, Y(y1 / 2)))
        for mi, (name, col) in enumerate(MODES):
            p = sorted((math.log2(r[2]), r[3 + mi]) for r in pts)
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
