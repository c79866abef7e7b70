"""Print a job's outputs side by side with its prompts: `python examples/show_outputs.py JOB_DIR`."""

import json
import sys
from pathlib import Path

job_dir = Path(sys.argv[1])
for name in ("success.jsonl", "errors.jsonl"):
    print(f"\n== {job_dir / name}")
    for raw in (job_dir / name).read_text(encoding="utf-8").splitlines():
        record = json.loads(raw)
        if "generations" in record:
            answer = record["generations"][0]["text"].strip().replace("\n", " ")
            print(f"line {record['line']:>3}: {answer[:120]}")
        else:
            print(f"line {record['line']}: {record['error']['code']}: {record['error']['message']}")
