# Neural audio fingerprinting workflow. Run everything with `snakemake --cores N all`; any stage reruns alone by its
# target (see README). All logic lives in workflow_lib/; profiles/default/ holds the settings every run uses.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from workflow_lib.common.config import ConfigError, validate as validate_config

min_version("9.0")


# Defaults beside the Snakefile; a user --configfile is merged on top, so any working directory works.
configfile: os.path.join(workflow.basedir, "config/config.yaml")


# Checked against config/schema.yaml at once; a wrong key or type is named in one line.
try:
    validate_config(config, ["the run's config (config/config.yaml + --configfile + --config)"])
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/database.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.effective_config.output,
        rules.data.input,
        rules.train.output.model if config["model"]["source"] == "train" else [],
        rules.database.input,
        rules.evaluate.output.summary,


rule searchable:
    """A searchable database without evaluation: what `nafp index` builds (with model.source: bundled)."""
    input:
        rules.effective_config.output,
        rules.database.input,
        rules.calibrate.output,


onsuccess:
    if os.path.exists(rules.evaluate.output.summary):
        print(f"\nDone. The evaluation: {rules.evaluate.output.summary} (also `snakemake --report report.html`).\n"
              f"Search the database:   .venv/bin/nafp query YOUR_CLIP.mp3 --results {os.path.abspath(RESULTS)}\n"
              f"Listen live:           .venv/bin/nafp listen --results {os.path.abspath(RESULTS)}")
