# Database stages: sharded fingerprint extraction, the FAISS index and the song catalogue.
# Songs added or removed with `nafp db` are recorded under results/fingerprints/ (added/*.parquet,
# removed_songs.txt) and taken into account by build_index and catalogue, so a rebuild keeps those edits.


rule extract:
    """Fingerprints of one shard of the database songs (every 1 s segment at 0.5 s hop)."""
    input:
        songs=rules.manifest.output.songs,
        splits=rules.split.output.splits,
        model=MODEL_FILE,
    output:
        PATHS["shard"],
    wildcard_constraints:
        shard=r"\d+",
    params:
        # Only what changes the result: a change reruns the shards (unchanged songs are reused from the cache).
        opts={k: config["extract"][k] for k in ("splits", "n_shards", "device", "batch_size", "compile", "dtype",
                                                "chunk_seconds", "reuse")},
    log:
        f"{LOGS}/extract/shard-{{shard}}.log",
    conda:
        ENV
    threads: config["extract"]["threads"]
    resources:
        mem_mb=4000,
        runtime=config["extract"]["runtime_min"],
    script:
        "../scripts/extract.py"


rule build_index:
    """FAISS index over every shard (training reused from earlier builds while it fits), id map, vectors, sidecar."""
    input:
        shards=SHARD_FILES,
        added=added_fingerprints,
        removed=removed_songs_file,
        # A song added with `nafp db add` whose file is now in the music folders is left to the folders' copy.
        songs=rules.manifest.output.songs,
        other_music=other_music_input,
    output:
        INDEX_FILES,
    params:
        opts=INDEX_PARAMS,
    log:
        f"{LOGS}/build_index.log",
    conda:
        ENV
    threads: config["index"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/build_index.py"


rule catalogue:
    """Song id -> title / artist / path, from tags or else the file name."""
    input:
        songs=rules.manifest.output.songs,
        added=added_fingerprints,
        removed=removed_songs_file,
    output:
        PATHS["catalogue"],
    params:
        # Reruns the stage when the catalogue gains a column (an upgrade), though no song changed.
        format=CATALOGUE_FORMAT,
    log:
        f"{LOGS}/catalogue.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/catalogue.py"


rule database:
    """The searchable database: `snakemake --cores N database`."""
    input:
        rules.build_index.output,
        rules.catalogue.output,
