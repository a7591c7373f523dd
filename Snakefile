# Neural audio fingerprinting workflow. Run everything with `snakemake --cores N all`;
# any stage reruns alone by its target (see README). All logic lives in workflow_lib/.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


# Defaults beside the Snakefile; a user --configfile is merged on top, so any working directory works.
configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, os.path.join(workflow.basedir, "config/schema.yaml"))

# Each rules file appends the final outputs of its stages here; `all` builds them.
ALL_TARGETS = []


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/database.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
