"""From finished runs to the study's results: the tidy runs table, statistics, plots and report.md.

`segkd.report.aggregate.aggregate(study, runs=..., out=...)` is the entry point (`segkd aggregate`);
`segkd.report.band_figure.bands(run_dir)` draws one frequency-distilled run's bands (`segkd bands`).
"""
