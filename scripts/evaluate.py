"""Snakemake adapter: metrics, summary table and plots from every system's answers."""
from workflow_lib.evaluate import summarize
from workflow_lib.logs import setup_logging

setup_logging(snakemake.log[0])
o = snakemake.output
summarize(snakemake.input.queries, snakemake.input.results, o.metrics, o.summary, o.summary_html,
          {"song_top1": o.hit_song, "seg_top1_exact": o.hit_segment}, snakemake.input.threshold)
