"""Plot bench/scale.json (written by ``python -m bench.scale``) as bench/scale.png: time vs N.

    .venv/bin/python -m bench.plot [--json bench/scale.json] [--out bench/scale.png]

Log-log axes: nepi_dist's deploy-to-all-finished time, the raw Celery floor for
the same number of messages (measured in the same run), per worker count, and
NEPI's own controller on the same shape (measured in the same run when
``bench.scale --nepi`` was given, else the figures quoted in issue 5),
with a linear reference through nepi_dist's smallest N.  Needs the ``bench``
extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: NEPI's controller (Python 3 port) on test_concurrency without sleeps, from issue 5: N -> seconds.
NEPI_FIGURES = {100: 3.2, 1000: 3.7, 3000: 15.2, 6000: 55.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=str(HERE / "scale.json"))
    parser.add_argument("--out", default=str(HERE / "scale.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.json).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    first = None
    for config in data["configs"]:
        runs = sorted(config["runs"], key=lambda r: r["n"])
        ns = [r["n"] for r in runs]
        first = first or runs[0]
        w = config["workers"]
        ax.plot(ns, [r["seconds"] for r in runs], "o-", label=f"nepi_dist, {w} worker process(es)")
        ax.plot(ns, [r["raw_floor_s"] for r in runs], "s--", alpha=0.6,
                label=f"raw Celery floor, {w} worker process(es) (same messages, same run)")
    if data.get("nepi_measured"):
        nepi = {int(n): t for n, t in data["nepi_measured"].items()}
        done = {n: t for n, t in nepi.items() if t > 0}
        ax.plot(list(done), list(done.values()), "^:", label="NEPI's controller (measured in the same run)")
        late = {n: -t for n, t in nepi.items() if t <= 0}
        if late:
            ax.plot(list(late), list(late.values()), "^", markerfacecolor="none",
                    label="NEPI's controller: not finished after this long")
    else:
        ax.plot(list(NEPI_FIGURES), list(NEPI_FIGURES.values()), "^:", label="NEPI's controller (issue 5 figures)")
    if first is not None:
        ns_all = sorted({r["n"] for c in data["configs"] for r in c["runs"]})
        ax.plot(ns_all, [first["seconds"] * n / first["n"] for n in ns_all], color="grey", lw=0.8,
                label="linear in N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N applications (one node)")
    ax.set_ylabel("seconds")
    ax.set_title(f"bench.scale {data['date']}: one node, N applications")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
