# Data stages: the run's settings, demo corpus, manifest, split, noise and impulse-response preparation.


rule effective_config:
    """The validated config of this run (defaults + --configfile + --config) as results/config.yaml: the nafp
    commands read it back, so a query is searched the way its database was made."""
    output:
        f"{RESULTS}/config.yaml",
    params:
        # The whole config as a parameter: any change rewrites the file.
        config=config,
    log:
        f"{LOGS}/effective_config.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    script:
        "../scripts/effective_config.py"


rule demo_corpus:
    output:
        catalogue=f"{DEMO_DIR}/catalogue.csv",
        music=directory(f"{DEMO_DIR}/music"),
    params:
        n_songs=config["demo"]["n_songs"],
        duration_s=config["demo"]["duration_s"],
        seed=config["demo"]["seed"],
    log:
        f"{LOGS}/demo_corpus.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/demo_corpus.py"


rule manifest:
    input:
        demo_marker,
    output:
        songs=f"{RESULTS}/manifest/songs.parquet",
        rejected=f"{RESULTS}/manifest/rejected.parquet",
    params:
        # Listed as params so that changing the folders reruns the scan.
        music_dirs=music_dirs(),
        distractor_dirs=config["data"]["distractor_dirs"],
        min_duration_s=config["data"]["min_duration_s"],
        silence_dbfs=config["data"]["silence_dbfs"],
    log:
        f"{LOGS}/manifest.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/manifest.py"


rule split:
    input:
        songs=rules.manifest.output.songs,
    output:
        splits=f"{RESULTS}/split/splits.parquet",
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
    log:
        f"{LOGS}/split.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/split.py"


rule prepare_noise:
    output:
        multiext(f"{RESULTS}/noise/train", ".npy", ".parquet"),
        multiext(f"{RESULTS}/noise/test", ".npy", ".parquet"),
    params:
        noise_dirs=config["data"]["noise_dirs"],
        speech_dirs=config["data"]["speech_dirs"],
        opts=config["noise"],
        out_dir=f"{RESULTS}/noise",
    log:
        f"{LOGS}/prepare_noise.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/prepare_noise.py"


rule prepare_irs:
    output:
        multiext(f"{RESULTS}/irs/train", ".npy", ".parquet"),
        multiext(f"{RESULTS}/irs/test", ".npy", ".parquet"),
    params:
        ir_dirs=config["data"]["ir_dirs"],
        opts=config["irs"],
        out_dir=f"{RESULTS}/irs",
    log:
        f"{LOGS}/prepare_irs.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/prepare_irs.py"


rule data:
    """Every data stage; `snakemake --cores N data` prepares inputs without training."""
    input:
        rules.split.output,
        rules.prepare_noise.output,
        rules.prepare_irs.output,


ALL_TARGETS.extend(rules.data.input)
ALL_TARGETS.append(rules.effective_config.output[0])
