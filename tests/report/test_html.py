"""HtmlReport: escaping, tables, figures."""

import math

from seglab.report.html import HtmlReport, format_value


def test_format_value():
    assert format_value(0.123456) == "0.1235"
    assert format_value(math.nan) == "—" and format_value(None) == "—"
    assert format_value(math.inf) == "∞"
    assert format_value(123456) == "123,456" and format_value(7) == "7"
    assert format_value(True) == "True" and format_value("x") == "x"


def test_report_escapes_and_lays_out(tmp_path):
    r = HtmlReport("<demo>", subtitle="s")
    r.heading("A & B")
    r.paragraph("x < y", css_class="summary")
    r.table([{"name": "<b>", "dice": 0.5}, {"name": "c", "iou": 1.0}])
    r.figure("overlays/frame 17.png", "caption <i>")
    r.preformatted("a: 1\n")
    path = r.write(tmp_path / "out" / "report.html")
    text = path.read_text()
    assert "<title>&lt;demo&gt;</title>" in text and "<h2>A &amp; B</h2>" in text
    assert '<p class="summary">x &lt; y</p>' in text
    assert "<th>name</th><th>dice</th><th>iou</th>" in text
    assert '<td class="text">&lt;b&gt;</td><td>0.5000</td><td>—</td>' in text  # text left, numbers right
    assert 'src="overlays/frame 17.png"' in text and "caption &lt;i&gt;" in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_numbers_right_sentences_left(tmp_path):
    r = HtmlReport("t", subtitle="s")
    r.table([{"a": "23.3 px", "b": "3 steps of 8 crops", "c": "1,234", "d": "—", "e": 0.5}])
    text = r.render()
    assert "<td>23.3 px</td>" in text and '<td class="text">3 steps of 8 crops</td>' in text
    assert "<td>1,234</td>" in text and "<td>—</td>" in text and "<td>0.5000</td>" in text
