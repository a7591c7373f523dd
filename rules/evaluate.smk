# Search calibration and offline evaluation: no-match threshold, query set, neural and audfprint runs, metrics.
# Inputs follow docs/ARCHITECTURE.md: the model file, the index folder's files, the manifest, splits and the
# held-out noise / IR banks.

# DB_INDEX_DIR / DB_INDEX_FILES come from database.smk, MODEL_FILE from common.smk.
EVAL_DIR = f"{RESULTS}/eval"
THRESHOLD_FILE = f"{DB_INDEX_DIR}/threshold.json"
# The evaluate keys that define the queries (for params: toggling the baseline or the modes reruns only what uses
# them, not the query set or the calibration).
QUERY_PLAN = {k: v for k, v in config["evaluate"].items() if k not in ("modes", "baseline_audfprint", "audfprint")}
QUERY_AUDIO = f"{EVAL_DIR}/queries/audio"
# The search keys that change search results (not batch size or device).
SEARCH_PARAMS = {k: v for k, v in config["search"].items() if k not in ("batch_size", "device", "mode")}


rule calibrate:
    """No-match threshold for the configured false-positive rate, from queries of songs the model never trained on,
    searched with their own fingerprints skipped (leave-one-song-out)."""
    input:
        model=MODEL_FILE,
        index=DB_INDEX_FILES,
        songs=f"{RESULTS}/manifest/songs.parquet",
        splits=f"{RESULTS}/split/splits.parquet",
        noise=multiext(f"{RESULTS}/noise/train", ".npy", ".parquet"),
        irs=multiext(f"{RESULTS}/irs/train", ".npy", ".parquet"),
    output:
        threshold=THRESHOLD_FILE,
    params:
        index_dir=DB_INDEX_DIR,
        search=SEARCH_PARAMS,
        evaluate=QUERY_PLAN,
        device=config["search"]["device"],
        batch_size=config["search"]["batch_size"],
        noise_prefix=f"{RESULTS}/noise/train",
        ir_prefix=f"{RESULTS}/irs/train",
    log:
        f"{LOGS}/calibrate.log",
    # One torch thread: queries are small batches, and spinning OpenMP threads stall on a busy machine.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/calibrate.py"


rule eval_queries:
    """Seeded query files cut from the database songs (never trained on, and trained on) and from unknown songs, clean
    and degraded. The audio is temporary: Snakemake deletes it once both systems have answered (--notemp keeps it)."""
    input:
        songs=f"{RESULTS}/manifest/songs.parquet",
        splits=f"{RESULTS}/split/splits.parquet",
        index_meta=f"{DB_INDEX_DIR}/index_meta.parquet",
        noise=multiext(f"{RESULTS}/noise/test", ".npy", ".parquet"),
        irs=multiext(f"{RESULTS}/irs/test", ".npy", ".parquet"),
    output:
        queries=f"{EVAL_DIR}/queries/queries.parquet",
        audio=temp(directory(QUERY_AUDIO)),
    params:
        evaluate=QUERY_PLAN,
        out_dir=f"{EVAL_DIR}/queries",
        noise_prefix=f"{RESULTS}/noise/test",
        ir_prefix=f"{RESULTS}/irs/test",
    log:
        f"{LOGS}/eval_queries.log",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    script:
        "../scripts/eval_queries.py"


rule eval_neural:
    """Every query file through the neural searcher, in every configured mode."""
    input:
        queries=rules.eval_queries.output.queries,
        audio=rules.eval_queries.output.audio,
        model=MODEL_FILE,
        index=DB_INDEX_FILES,
        threshold=THRESHOLD_FILE,
    output:
        results=f"{EVAL_DIR}/results_neural.parquet",
    params:
        index_dir=DB_INDEX_DIR,
        search=SEARCH_PARAMS,
        device=config["search"]["device"],
        batch_size=config["search"]["batch_size"],
        modes=config["evaluate"]["modes"],
    log:
        f"{LOGS}/eval_neural.log",
    # One torch thread, like a single query on a user's machine: latencies are measured per query.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    script:
        "../scripts/eval_neural.py"


rule baseline_audfprint:
    """audfprint (landmark hashes) over the same database songs and the very same query files."""
    input:
        queries=rules.eval_queries.output.queries,
        audio=rules.eval_queries.output.audio,
        songs=f"{RESULTS}/manifest/songs.parquet",
        index_meta=f"{DB_INDEX_DIR}/index_meta.parquet",
    output:
        results=f"{EVAL_DIR}/results_audfprint.parquet",
    params:
        audfprint=config["evaluate"]["audfprint"],
    log:
        f"{LOGS}/baseline_audfprint.log",
    threads: 2
    resources:
        mem_mb=6000,
        runtime=480,
    script:
        "../scripts/baseline_audfprint.py"


def _eval_results(wildcards=None):
    out = [rules.eval_neural.output.results]
    if config["evaluate"]["baseline_audfprint"]:
        out.append(rules.baseline_audfprint.output.results)
    return out


rule evaluate:
    """Metrics, summary table and hit-rate plots (neural, and audfprint when enabled)."""
    input:
        queries=rules.eval_queries.output.queries,
        results=_eval_results(),
        threshold=THRESHOLD_FILE,
        index_json=f"{DB_INDEX_DIR}/index.json",
    output:
        metrics=f"{EVAL_DIR}/metrics.parquet",
        summary=report(f"{EVAL_DIR}/summary.md", caption="../report/summary.rst", category="Evaluation",
                       labels={"figure": "summary (Markdown)"}),
        summary_html=report(f"{EVAL_DIR}/summary.html", caption="../report/summary.rst", category="Evaluation",
                            labels={"figure": "summary"}),
        hit_song=report(f"{EVAL_DIR}/hit_rate_song.png", caption="../report/hit_rate_song.rst",
                        category="Evaluation", labels={"figure": "song-level hit rate vs query length"}),
        hit_segment=report(f"{EVAL_DIR}/hit_rate_segment.png", caption="../report/hit_rate_segment.rst",
                           category="Evaluation", labels={"figure": "segment-level hit rate vs query length"}),
    log:
        f"{LOGS}/evaluate.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/evaluate.py"


ALL_TARGETS.append(rules.evaluate.output.summary)
