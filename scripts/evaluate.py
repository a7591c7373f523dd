"""Snakemake adapter: metrics, summary table and plots from every system's answers."""
from workflow_lib.evaluation.report import summarize
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
summarize(i.queries, i.results, o.metrics, o.summary, o.summary_html,
          {"song_top1": o.hit_song, "seg_top1_exact": o.hit_segment}, i.threshold, i.index_json)
