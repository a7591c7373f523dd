# Search calibration and offline evaluation: no-match threshold, query set, neural and audfprint runs, metrics.
# Inputs follow docs/ARCHITECTURE.md: the model file, the index folder's files, the manifest, splits and the
# held-out noise / IR banks.


rule calibrate:
    """No-match threshold for the configured false-positive rate, from queries of songs the model never trained on,
    searched with their own fingerprints skipped (leave-one-song-out)."""
    input:
        model=MODEL_FILE,
        index=rules.build_index.output,
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
        noise=rules.prepare_noise.output.train,
        irs=rules.prepare_irs.output.train,
        null_bank=null_bank_input,
    output:
        threshold=PATHS["threshold"],
        table=report(PATHS["thresholds_csv"], caption="../report/thresholds.rst", category="Settings",
                     labels={"item": "no-match thresholds"}),
    params:
        search=SEARCH_PARAMS,
        evaluate=QUERY_PLAN,
        device=config["search"]["device"],
        batch_size=config["search"]["batch_size"],
        code=CODE_DIGEST,
    log:
        f"{LOGS}/calibrate.log",
    # Two queries side by side, each on one torch thread (small batches gain less from a second torch thread, and
    # spinning OpenMP threads stall on a busy machine); Snakemake lowers it to --cores.
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/calibrate.py"


rule eval_queries:
    """Seeded query files cut from the database songs (never trained on, and trained on) and from unknown songs, clean
    and degraded. The audio is temporary: Snakemake deletes it once both systems have answered (--notemp keeps it)."""
    input:
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
        index=rules.build_index.output,
        noise=rules.prepare_noise.output.test,
        irs=rules.prepare_irs.output.test,
    output:
        queries=f"{PATHS['eval_dir']}/queries/queries.parquet",
        audio=temp(directory(f"{PATHS['eval_dir']}/queries/audio")),
    params:
        evaluate=QUERY_PLAN,
    log:
        f"{LOGS}/eval_queries.log",
    conda:
        ENV
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
        index=rules.build_index.output,
        threshold=rules.calibrate.output.threshold,
    output:
        results=f"{PATHS['eval_dir']}/results_neural.parquet",
    params:
        search=SEARCH_PARAMS,
        device=config["search"]["device"],
        batch_size=config["search"]["batch_size"],
        modes=config["evaluate"]["modes"],
    log:
        f"{LOGS}/eval_neural.log",
    # One torch thread, like a single query on a user's machine: latencies are measured per query.
    conda:
        ENV
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
        songs=rules.manifest.output.songs,
        index=rules.build_index.output,
    output:
        results=f"{PATHS['eval_dir']}/results_audfprint.parquet",
    params:
        audfprint=config["evaluate"]["audfprint"],
    log:
        f"{LOGS}/baseline_audfprint.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=6000,
        runtime=480,
    script:
        "../scripts/baseline_audfprint.py"


rule monitor:
    """Monitoring benchmark (optional, evaluate.monitoring.enabled): synthetic programmes scanned by nafp scan and,
    with the baseline enabled, by audfprint."""
    input:
        model=MODEL_FILE,
        index=rules.build_index.output,
        catalogue=rules.catalogue.output,
        threshold=rules.calibrate.output.threshold,
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
        noise=rules.prepare_noise.output.test,
        irs=rules.prepare_irs.output.test,
    output:
        results=f"{PATHS['eval_dir']}/monitoring.parquet",
    params:
        search=SEARCH_PARAMS,
        device=config["search"]["device"],
        batch_size=config["search"]["batch_size"],
        listen=config["listen"],
        evaluate=QUERY_PLAN | {"monitoring": MONITORING_PARAMS},
        audfprint=config["evaluate"]["audfprint"] if config["evaluate"]["baseline_audfprint"] else None,
    log:
        f"{LOGS}/monitor.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    script:
        "../scripts/monitor.py"


rule evaluate:
    """Metrics, summary table and hit-rate plots (neural, and audfprint when enabled)."""
    input:
        queries=rules.eval_queries.output.queries,
        results=eval_results(),
        threshold=rules.calibrate.output.threshold,
        index=rules.build_index.output,
        monitoring=monitoring_results,
        songs=rules.manifest.output.songs,  # audio of the songs: offsets on a repeat of the query's audio
    output:
        metrics=f"{PATHS['eval_dir']}/metrics.parquet",
        metrics_csv=report(f"{PATHS['eval_dir']}/metrics.csv", caption="../report/metrics.rst", category="Evaluation",
                           labels={"figure": "metrics table"}),
        summary=f"{PATHS['eval_dir']}/summary.md",  # the same summary as the HTML one below, for reading in git
        summary_html=report(f"{PATHS['eval_dir']}/summary.html", caption="../report/summary.rst", category="Evaluation",
                            labels={"figure": "summary"}),
        hit_song=report(f"{PATHS['eval_dir']}/hit_rate_song.png", caption="../report/hit_rate_song.rst",
                        category="Evaluation", labels={"figure": "song-level hit rate vs query length"}),
        hit_segment=report(f"{PATHS['eval_dir']}/hit_rate_segment.png", caption="../report/hit_rate_segment.rst",
                           category="Evaluation", labels={"figure": "segment-level hit rate vs query length"}),
    log:
        f"{LOGS}/evaluate.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/evaluate.py"


