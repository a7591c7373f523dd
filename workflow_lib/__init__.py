"""Neural audio fingerprinting: all workflow logic, importable and testable without Snakemake."""

SAMPLE_RATE = 8000
SEGMENT_SAMPLES = 8000  # 1 s
HOP_SAMPLES = 4000  # 0.5 s
SEGMENT_S = SEGMENT_SAMPLES / SAMPLE_RATE
HOP_S = HOP_SAMPLES / SAMPLE_RATE

__version__ = "0.2.0"
