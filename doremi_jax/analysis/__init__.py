"""What reads finished runs: reports, plots, health checks, statistics.

Each report is two steps: `collect(run_dir) -> dict` reads the run directory
(JSON-ready; every number the Markdown shows is in it) and `render(dict,
out_dir) -> Markdown` lays it out and draws its plots from the dict alone,
so a report can be re-rendered, tested or read by another tool from its
JSON. `write(run_dir)` does both and writes the files.

pipeline_report.py  report.json, report.md, plots/ of a DoReMi run directory
study_stats.py      study.json: the study's statistics, from its arms' runs
study_report.py     study.md and its plots, from study.json
swarm_report.py     swarm.md and its plots, from swarm.json
compare.py          the DoReMi-vs-baseline comparison of two main models
plots.py            the figures (matplotlib, Agg)
stats.py            intervals, paired differences, speed-up (pure)
health.py           health-check lines (pure)

Nothing here imports the stages, the runner or the training code; the stages
call in (the study and swarm stages compute study.json and swarm.json, the
pipeline writes its report at the end). File names come from `rundir`.
"""
