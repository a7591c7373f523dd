"""Snakemake adapter: metrics, summary table and plots from every system's answers."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.logs import setup_logging
from workflow_lib.evaluation.report import summarize

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
index_json = next(f for f in i.index if f.endswith("index.json"))
summarize(i.queries, i.results, o.metrics, o.summary, o.summary_html,
          {"song_top1": o.hit_song, "seg_top1_exact": o.hit_segment}, i.threshold, index_json,
          monitoring_path=i.monitoring[0] if i.monitoring else None, metrics_csv=o.metrics_csv, songs_path=i.songs)
