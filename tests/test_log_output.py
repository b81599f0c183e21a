"""Tables read in a log: piped or redirected (CliRunner's stdout is not a terminal), `compare` and
`bench` print every cell in full, never cut to 80 columns with an ellipsis."""

import json

from typer.testing import CliRunner

from stepvar.eval.report_md import bench_compact_rows, compare_compact_rows
from stepvar_cli.app import app
from stepvar_cli.safe_print import LogConsole

runner = CliRunner()


def _every_cell_in(rows: tuple[list[str], list[list[str]]], text: str) -> None:
    head, cells = rows
    assert "…" not in text
    lines = text.splitlines()
    for row in cells:  # each row's cells appear, in order, on one line
        assert any(all(c in line for c in row) for line in lines), (row, text)
    assert any(all(h in line for h in head) for line in lines), (head, text)


def test_bench_table_is_full_width_when_piped():
    args = ["bench", "--flops-only", "--model", "infinity-2b", "--resolution", "256,512,1024",
            "--methods", "dense,stepvar,fastvar,stepvar:norm=rank:w_str=2:border=reflect:power_init=variance:metric=chebyshev",
            "--keep", "0.3,0.4,0.5"]
    text = runner.invoke(app, args).stdout
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    _every_cell_in(bench_compact_rows(data["results"]), text)


def test_compare_table_is_full_width_when_piped(tmp_path):
    args = ["compare", "--model", "tiny", "--device", "cpu", "--prompt", "a red circle", "--warmup", "0",
            "--methods", "dense,stepvar:norm=rank:w_str=2:border=reflect,fastvar-skip", "--keep", "0.5"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.stderr
    data = json.loads((tmp_path / "a" / "report.json").read_text())
    head, cells = compare_compact_rows(data["results"])
    assert sum(len(c) + 2 for c in cells[1]) > 80  # the table is wider than a default pipe width
    _every_cell_in((head, cells), r.stdout)


def test_a_terminal_keeps_its_own_width():
    import io

    console = LogConsole(file=io.StringIO(), force_terminal=True, width=100)
    assert console.width == 100
    assert LogConsole(file=io.StringIO()).width > 10_000


def test_training_progress_shows_on_a_terminal_only():
    import io

    from stepvar_cli.safe_print import step_progress

    tty = LogConsole(file=io.StringIO(), force_terminal=True, width=100)
    advance = step_progress(tty, 20, "train vae")
    advance(10)
    advance(20)
    assert "20/20" in tty.file.getvalue()
    piped = LogConsole(file=io.StringIO())
    advance = step_progress(piped, 20, "train vae")
    advance(20)
    assert piped.file.getvalue() == ""
