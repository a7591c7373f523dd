"""Snakemake adapter: song id -> title / artist / path for every manifest song (and songs added with db.py)."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.database.catalogue import added_catalogue_rows, write_catalogue
from workflow_lib.database.removed import read_removed_songs
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
write_catalogue(snakemake.input.songs, snakemake.output[0], extra=[added_catalogue_rows(snakemake.input.added)],
                removed=read_removed_songs(snakemake.input.removed))
