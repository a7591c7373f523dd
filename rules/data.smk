# Data stages: the run's settings, demo corpus, manifest, split, noise and impulse-response preparation.


rule effective_config:
    """The validated config of this run (defaults + --configfile + --config) as results/config.yaml: the nafp
    commands read it back, so a query is searched the way its database was made."""
    output:
        report(PATHS["config"], caption="../report/config.rst", category="Settings",
               labels={"item": "effective config"}),
    params:
        # The whole config as a parameter: any change rewrites the file.
        config=config,
    log:
        f"{LOGS}/effective_config.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    script:
        "../scripts/effective_config.py"


rule demo_corpus:
    """Synthetic songs, only when no music is configured."""
    output:
        catalogue=PATHS["demo_catalogue"],
        music=directory(PATHS["demo_music"]),
    params:
        n_songs=config["demo"]["n_songs"],
        duration_s=config["demo"]["duration_s"],
        seed=config["demo"]["seed"],
    log:
        f"{LOGS}/demo_corpus.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/demo_corpus.py"


rule manifest:
    """Every audio file of the music folders, checked; the rest listed with the reason."""
    input:
        demo_marker,
    output:
        songs=PATHS["songs"],
        rejected=PATHS["rejected"],
        rejected_csv=PATHS["rejected_csv"],
    params:
        # Listed as params so that changing the folders, or the audio files in them, reruns the scan.
        music_dirs=music_dirs(),
        listing=music_listing,
        distractor_dirs=config["data"]["distractor_dirs"],
        unknown_dirs=config["data"]["unknown_dirs"],
        min_duration_s=config["data"]["min_duration_s"],
        silence_dbfs=config["data"]["silence_dbfs"],
    log:
        f"{LOGS}/manifest.log",
    conda:
        ENV
    threads: config["data"]["scan_threads"]  # processes that decode; Snakemake lowers it to --cores
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/manifest.py"


rule split:
    """Song-disjoint train/val/test/distractor split by a seeded hash of each song id."""
    input:
        songs=rules.manifest.output.songs,
    output:
        splits=PATHS["splits"],
        csv=PATHS["splits_csv"],
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
    log:
        f"{LOGS}/split.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/split.py"


rule prepare_noise:
    """Noise (and babble from speech) decoded into train/test clip banks, split by file."""
    output:
        train=bank("noise", "train"),
        test=bank("noise", "test"),
    params:
        noise_dirs=config["data"]["noise_dirs"],
        speech_dirs=config["data"]["speech_dirs"],
        opts=config["noise"],
    log:
        f"{LOGS}/prepare_noise.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/prepare_noise.py"


rule prepare_irs:
    """Measured and simulated rooms, resonant spaces and device responses, in train/test clip banks."""
    output:
        train=bank("irs", "train"),
        test=bank("irs", "test"),
    params:
        ir_dirs=config["data"]["ir_dirs"],
        opts=config["irs"],
    log:
        f"{LOGS}/prepare_irs.log",
    conda:
        ENV
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
