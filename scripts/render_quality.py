"""Write the quality tables (Markdown) and a labelled grid from a finished scripts/quality_tables.sh run.

    python scripts/render_quality.py OUT [--title TEXT] [--command TEXT] [--grid-keep 0.4] [--grid-prompts 0,12,50,60]

Reads OUT/compare/report.json and OUT/bench/report.json (the bench may be missing: its columns
are then "-"), writes OUT/quality.md and OUT/grid_keep<K>.png (4 prompts: a single object, a count
and two relations unless --grid-prompts names them; dense and every configuration at that keep).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from stepvar.errors import StepvarError
    from stepvar.eval.quality_tables import quality_grid, quality_markdown
    from stepvar.io import save_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default="Quality and speed per method and keep")
    ap.add_argument("--command", default=None, help="the command that measured it, shown above the table")
    ap.add_argument("--grid-keep", type=float, default=0.4)
    ap.add_argument("--grid-prompts", default=None, help="comma-separated prompt indices of the grid's rows")
    args = ap.parse_args(argv)
    try:
        compare_path, bench_path = args.out / "compare" / "report.json", args.out / "bench" / "report.json"
        if not compare_path.is_file():
            raise StepvarError(f"{compare_path}: not found; run scripts/quality_tables.sh first")
        compare = json.loads(compare_path.read_text(encoding="utf-8"))
        bench = json.loads(bench_path.read_text(encoding="utf-8")) if bench_path.is_file() else None
        save_text(args.out / "quality.md", quality_markdown(compare, bench, args.title, args.command))
        ids = None if args.grid_prompts is None else [int(x) for x in args.grid_prompts.split(",")]
        grid = quality_grid(args.out / "compare", args.out / f"grid_keep{args.grid_keep:g}.png", args.grid_keep, ids)
    except (StepvarError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'quality.md'} and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
