"""One self-contained HTML page from a results folder: `build_report(DIR) -> DIR/report.html`.

It reads only what the store wrote (suite.json and each experiment's summary.json,
config.toml, env.json, *.csv, figures/*.png); no training and no experiment code runs.

    collect.py    the folder -> plain data (Results, Experiment, Table, Figure)
    fmt.py        escaping, number formatting, tables
    sections.py   one experiment's section
    page.py       header, contents, parts, the page; build_report
    style.css     screen and print styles, inlined into the page
    pdf.py        report.pdf: the page printed by headless Chromium (`write_pdf`)
"""

from dlscope.report.page import build_report

__all__ = ["build_report"]
