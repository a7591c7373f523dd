# Model stage: decode the training/validation songs once into memory-mapped banks, then train the fingerprinter.
# The train rule resumes from results/model/checkpoints/last.pt when it exists (deliberately not a declared output,
# so Snakemake keeps it when a killed job is rerun); delete that folder to train from scratch. Progress files of
# the running job (metrics and curves of every epoch) are written beside the checkpoint; the declared outputs
# appear only when training has finished.


rule train_audio:
    """Songs of a split decoded once into a memory-mapped bank (and its codec copy)."""
    input:
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
    output:
        song_bank_files("{split}"),
    wildcard_constraints:
        split="train|val",
    params:
        max_songs=lambda w: config["train"]["val_max_songs"] if w.split == "val" else 0,
        seed=config["train"]["seed"],
        codecs=TRAIN_CODECS,
    log:
        f"{LOGS}/train_audio_{{split}}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/train_audio.py"


rule train:
    """Contrastive training of the fingerprinter; resumes after a kill."""
    input:
        train_audio=song_bank_files("train"),
        val_audio=song_bank_files("val"),
        noise=rules.prepare_noise.output.train,
        irs=rules.prepare_irs.output.train,
        init=init_model,
        partner=partner_model,
    output:
        model=PATHS["model"],
        metrics=report(PATHS["train_metrics"], caption="../report/training_metrics.rst", category="Training",
                       labels={"figure": "per-epoch metrics"}),
        curves=report(PATHS["train_curves"], caption="../report/training_curves.rst", category="Training",
                      labels={"figure": "training curves"}),
    params:
        checkpoint=PATHS["checkpoint"],
        model=MODEL_PARAMS,
        train=TRAIN_PARAMS,
    log:
        f"{LOGS}/train.log",
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        # minutes: the training budget plus set-up and the final epoch's overrun
        runtime=min(int(config["train"]["max_minutes"]) + 30, 7 * 24 * 60),
    script:
        "../scripts/train.py"
