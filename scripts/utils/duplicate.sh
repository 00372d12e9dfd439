#!/bin/bash
# Copy an experiment's checkpoints and logs under a new name, e.g. to branch a run:
#   bash scripts/utils/duplicate.sh SOURCE_EXPERIMENT TARGET_EXPERIMENT [weights_root] [logs_root]
set -euo pipefail
source_name=${1:?usage: duplicate.sh SOURCE TARGET [weights_root] [logs_root]}
target_name=${2:?usage: duplicate.sh SOURCE TARGET [weights_root] [logs_root]}
weights_root=${3:-weights}
logs_root=${4:-logs}
if [ -e "${weights_root}/${target_name}" ]; then
  echo "error: ${weights_root}/${target_name} already exists; not overwriting it" >&2
  exit 2
fi
echo "copying ${source_name} to ${target_name}"
cp -r "${weights_root}/${source_name}" "${weights_root}/${target_name}"
if [ -d "${logs_root}/${source_name}" ]; then
  cp -r "${logs_root}/${source_name}" "${logs_root}/${target_name}"
fi
if [ -f "${logs_root}/${source_name}_log.jsonl" ]; then
  cp "${logs_root}/${source_name}_log.jsonl" "${logs_root}/${target_name}_log.jsonl"
fi
