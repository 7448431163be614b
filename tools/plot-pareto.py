#!/usr/bin/env python3
"""Plot held-out perplexity against mean depth (the Pareto curve of early exit) as SVG.

    python3 tools/plot-pareto.py results.csv > docs/pareto.svg

Input: the CSV of tools/mor-sweep (one or several models). One panel per model; one colour per
policy family (full, fixed, router, confidence, saturation, free, budget); the points of a family
are joined in order of mean depth. Standard library only.
"""
import csv
import sys

COLORS = {"confidence@2": "#17becf", "confidence_maxprob@2": "#bcbd22", "saturation@2": "#e377c2",
          "full": "#000000", "fixed": "#7f7f7f", "router": "#9467bd", "confidence": "#1f77b4",
          "saturation": "#2ca02c", "free": "#d62728", "freeadapt": "#ff7f0e", "budget": "#8c564b"}


def family(policy):
    """confidence:0.4@2 -> 'confidence@2' (a capped variant is its own curve)."""
    fam = policy.split(":")[0]
    return fam + "@" + policy.split("@")[1] if "@" in policy else fam


def main(argv):
    rows = list(csv.DictReader(open(argv[1]))) if len(argv) > 1 else list(csv.DictReader(sys.stdin))
    models = []
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
    W, H, pad = 460, 320, 56
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="11">' % (W * len(models), H + 40)]
    for mi, model in enumerate(models):
        pts = [r for r in rows if r["model"] == model]
        xs = [float(r["mean_depth"]) for r in pts]
        ys = [float(r["perplexity"]) for r in pts]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 - x0 < 1e-9:
            x1 = x0 + 1
        if y1 - y0 < 1e-9:
            y1 = y0 + 1
        y1 += (y1 - y0) * 0.05
        ox = mi * W

        def X(v):
            return ox + pad + (v - x0) / (x1 - x0) * (W - 2 * pad)

        def Y(v):
            return pad / 2 + (1 - (v - y0) / (y1 - y0)) * (H - pad)

        out.append('<text x="%d" y="14" font-weight="bold">%s</text>' % (ox + pad, model))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(y0), X(x1), Y(y0)))
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>' % (X(x0), Y(y0), X(x0), Y(y1)))
        for i in range(5):
            vx = x0 + (x1 - x0) * i / 4
            vy = y0 + (y1 - y0) * i / 4
            out.append('<text x="%g" y="%g" text-anchor="middle">%.2f</text>' % (X(vx), Y(y0) + 14, vx))
            out.append('<text x="%g" y="%g" text-anchor="end">%.2f</text>' % (X(x0) - 4, Y(vy) + 4, vy))
        out.append('<text x="%g" y="%g" text-anchor="middle">mean depth (steps)</text>'
                   % ((X(x0) + X(x1)) / 2, Y(y0) + 30))
        out.append('<text x="%g" y="%g" transform="rotate(-90 %g %g)" text-anchor="middle">'
                   'held-out perplexity</text>' % (ox + 14, (Y(y0) + Y(y1)) / 2, ox + 14, (Y(y0) + Y(y1)) / 2))
        fams = []
        for r in pts:
            f = family(r["policy"])
            if f not in fams:
                fams.append(f)
        for fi, f in enumerate(fams):
            c = COLORS.get(f, "#17becf")
            fp = sorted([(float(r["mean_depth"]), float(r["perplexity"])) for r in pts if family(r["policy"]) == f])
            if len(fp) > 1:
                out.append('<polyline fill="none" stroke="%s" points="%s"/>'
                           % (c, " ".join("%g,%g" % (X(a), Y(b)) for a, b in fp)))
            for a, b in fp:
                out.append('<circle cx="%g" cy="%g" r="3" fill="%s"/>' % (X(a), Y(b), c))
            out.append('<rect x="%g" y="%g" width="10" height="10" fill="%s"/>' % (X(x1) - 90, Y(y1) + 4 + 14 * fi, c))
            out.append('<text x="%g" y="%g">%s</text>' % (X(x1) - 76, Y(y1) + 13 + 14 * fi, f))
    out.append("</svg>")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
