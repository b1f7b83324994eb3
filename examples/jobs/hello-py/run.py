"""Prints the run's identity and writes a JSON result: how a job hands data back to its caller.

Arguments: anything; ``--exit=N`` exits with N after writing the result.
"""

import json
import os
import sys

run_id = os.environ.get("JOBYARD_RUN_ID", "")
attempt = int(os.environ.get("JOBYARD_ATTEMPT", "0") or 0)
print(f"JOBYARD_RUN_ID={run_id}")
print(f"JOBYARD_ATTEMPT={attempt}")
print(f"WEBJOBS_NAME={os.environ.get('WEBJOBS_NAME', '')}")
print(f"args={json.dumps(sys.argv[1:])}")

result = {"run_id": run_id, "attempt": attempt, "args": sys.argv[1:], "python": sys.version.split()[0]}
result_file = os.environ.get("JOBYARD_RESULT_FILE")
if result_file:
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f)

code = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--exit=")), 0)
if code:
    print(f"exiting with {code}", file=sys.stderr)
sys.exit(code)
