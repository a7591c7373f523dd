# Database stages: sharded fingerprint extraction, the FAISS index and the song catalogue.
# Songs added or removed with scripts/db.py are recorded under results/fingerprints/ (added/*.parquet,
# removed_songs.txt) and taken into account by build_index and catalogue, so a rebuild keeps those edits.
import glob

FINGERPRINT_DIR = f"{RESULTS}/fingerprints"
SHARD_FILES = expand(f"{FINGERPRINT_DIR}/shard-{{shard}}.parquet", shard=range(config["extract"]["n_shards"]))
ADDED_DIR = f"{FINGERPRINT_DIR}/added"
REMOVED_SONGS = f"{FINGERPRINT_DIR}/removed_songs.txt"
DB_INDEX_DIR = f"{RESULTS}/index"
DB_INDEX_FILES = [f"{DB_INDEX_DIR}/{name}" for name in ("index.faiss", "index_meta.parquet", "vectors.f16.npy",
                                                        "index.json")]
CATALOGUE = f"{RESULTS}/catalogue.parquet"


def added_fingerprints(wildcards=None):
    """Fingerprint files written by `scripts/db.py add` (none in a fresh results folder)."""
    return sorted(glob.glob(f"{ADDED_DIR}/*.parquet"))


def removed_songs_file(wildcards=None):
    return [REMOVED_SONGS] if os.path.exists(REMOVED_SONGS) else []


rule extract:
    """Fingerprints of one shard of the database songs (every 1 s segment at 0.5 s hop)."""
    input:
        songs=f"{RESULTS}/manifest/songs.parquet",
        splits=f"{RESULTS}/split/splits.parquet",
        model=MODEL_FILE,
    output:
        f"{FINGERPRINT_DIR}/shard-{{shard}}.parquet",
    wildcard_constraints:
        shard=r"\d+",
    params:
        # Only what changes the result: a change reruns the shards (unchanged songs are reused from the cache).
        opts={k: config["extract"][k] for k in ("splits", "n_shards", "device", "batch_size", "compile", "dtype",
                                                "chunk_seconds", "reuse")},
    log:
        f"{LOGS}/extract/shard-{{shard}}.log",
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
    output:
        DB_INDEX_FILES,
    params:
        opts={k: v for k, v in config["index"].items() if k != "threads"},
        out_dir=DB_INDEX_DIR,
    log:
        f"{LOGS}/build_index.log",
    threads: config["index"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/build_index.py"


rule catalogue:
    """Song id -> title / artist / path, from tags or else the file name."""
    input:
        songs=f"{RESULTS}/manifest/songs.parquet",
        added=added_fingerprints,
    output:
        CATALOGUE,
    log:
        f"{LOGS}/catalogue.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../scripts/catalogue.py"


rule database:
    """The searchable database: `snakemake --cores N database`."""
    input:
        DB_INDEX_FILES,
        CATALOGUE,


ALL_TARGETS.extend(DB_INDEX_FILES + [CATALOGUE])
