"""`fabd spc check` and `fabd spc plot`, as an engineer runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from daemon.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["spc", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def series_file(tmp_path):
    p = tmp_path / "thk.txt"
    values = ["0"] + ["0.5"] * 9 + ["3", "", "3.01"]  # a blank line is skipped
    p.write_text("\n".join(values) + "\n")
    return p


def test_check_prints_the_indices_where_each_test_fires(capsys, series_file):
    rc, out, _ = _run(capsys, "check", "--center", "0", "--sigma", "1", str(series_file))
    assert rc == 0
    assert json.loads(out) == {"1": [11], "2": [9, 10, 11], "3": [], "4": [], "5": [11],
                               "6": [], "7": [], "8": []}


def test_check_with_western_electric_rules(capsys, series_file):
    rc, out, _ = _run(capsys, "check", "--center", "0", "--sigma", "1", "--rules", "we",
                      str(series_file))
    assert rc == 0
    assert json.loads(out) == {"1": [11], "2": [8, 9, 10, 11], "5": [11], "6": []}


def test_check_reads_stdin_when_no_file_is_given():
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "spc", "check", "--center", "10",
                           "--sigma", "0.1"], input="10.3\n10.31\n9.6\n", capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["1"] == [1, 2]


def test_a_non_numeric_line_is_named_and_exits_2(capsys, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("1.0\n2.0\n\n2,5\n")
    rc, out, err = _run(capsys, "check", "--center", "0", "--sigma", "1", str(p))
    assert rc == 2 and out == ""
    assert "line 4" in err and "2,5" in err


def test_a_missing_file_exits_2(capsys, tmp_path):
    rc, _, err = _run(capsys, "check", "--center", "0", "--sigma", "1", str(tmp_path / "no.txt"))
    assert rc == 2 and "no.txt" in err


def test_without_limits_they_are_estimated_from_the_series(capsys, series_file):
    rc, out, err = _run(capsys, "check", str(series_file))
    assert rc == 0 and "estimated" in err
    assert set(json.loads(out)) == {str(t) for t in range(1, 9)}


def test_plot_writes_a_png_chart(capsys, series_file, tmp_path):
    out_png = tmp_path / "chart.png"
    rc, out, _ = _run(capsys, "plot", "--center", "0", "--sigma", "1", str(series_file),
                      "--out", str(out_png))
    assert rc == 0 and "5 signals" in out
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_k_parameters_change_the_tests(capsys, series_file):
    rc, out, _ = _run(capsys, "check", "--center", "0", "--sigma", "1", "--k2", "5",
                      "--k1", "2.9", str(series_file))
    assert rc == 0
    got = json.loads(out)
    assert got["2"] == [5, 6, 7, 8, 9, 10, 11]
    assert got["1"] == [10, 11]  # 3.0 is beyond 2.9 sigma


def test_an_impossible_k_is_refused_with_its_range(capsys, series_file):
    rc, _, err = _run(capsys, "check", "--center", "0", "--sigma", "1", "--k2", "1",
                      str(series_file))
    assert rc == 2 and "k2_points must be in 2..62" in err


def test_a_long_series_reports_every_firing(capsys, tmp_path):
    p = tmp_path / "flat.txt"
    p.write_text("0.5\n" * 30_000)
    rc, out, _ = _run(capsys, "check", "--center", "0", "--sigma", "1", str(p))
    assert rc == 0
    assert json.loads(out)["2"] == list(range(8, 30_000))


def test_a_k_longer_than_the_daemons_history_is_accepted(capsys, tmp_path):
    # --k7 20 is in the documented range 2..62; 20 values hugging the centre fire at the 20th
    p = tmp_path / "hug.txt"
    p.write_text("0.1\n-0.1\n" * 11)
    rc, out, err = _run(capsys, "check", "--center", "0", "--sigma", "1", "--k7", "20",
                        "--k2", "40", str(p))
    assert rc == 0, err
    assert json.loads(out)["7"] == [19, 20, 21]
