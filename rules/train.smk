# Model stage: decode the training/validation songs once into memory-mapped banks, then train the fingerprinter.
# The train rule resumes from results/model/checkpoints/last.pt when it exists (deliberately not a declared output,
# so Snakemake keeps it when a killed job is rerun); delete that folder to train from scratch.


# The low-bitrate codec copy of the songs is built only when training draws codec views.
TRAIN_CODECS = config["train"]["codecs"] if config["train"]["augment"]["codec_prob"] > 0 else []


def song_bank_files(split):
    files = multiext(f"{RESULTS}/model/audio/{split}", ".npy", ".parquet")
    if TRAIN_CODECS:
        files += multiext(f"{RESULTS}/model/audio/{split}_codec", ".npy", ".parquet")
    return files


rule train_audio:
    input:
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
    output:
        song_bank_files("{split}"),
    wildcard_constraints:
        split="train|val",
    params:
        prefix=lambda w: f"{RESULTS}/model/audio/{w.split}",
        max_songs=lambda w: config["train"]["val_max_songs"] if w.split == "val" else 0,
        seed=config["train"]["seed"],
        codecs=TRAIN_CODECS,
    log:
        f"{LOGS}/train_audio_{{split}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/train_audio.py"


rule train:
    input:
        train_audio=song_bank_files("train"),
        val_audio=song_bank_files("val"),
        noise=multiext(f"{RESULTS}/noise/train", ".npy", ".parquet"),
        irs=multiext(f"{RESULTS}/irs/train", ".npy", ".parquet"),
    output:
        model=f"{RESULTS}/model/model.pt",
        metrics=f"{RESULTS}/model/metrics.csv",
        curves=f"{RESULTS}/model/training_curves.png",
    params:
        banks={
            "train": f"{RESULTS}/model/audio/train",
            "val": f"{RESULTS}/model/audio/val",
            "noise": f"{RESULTS}/noise/train",
            "irs": f"{RESULTS}/irs/train",
        },
        checkpoint=f"{RESULTS}/model/checkpoints/last.pt",
        model=config["model"],
        train=config["train"],
    log:
        f"{LOGS}/train.log",
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        # minutes: the training budget plus set-up and the final epoch's overrun
        runtime=int(config["train"]["max_minutes"]) + 30,
    script:
        "../scripts/train.py"


if config["model"]["source"] == "train":
    ALL_TARGETS.append(rules.train.output.model)
