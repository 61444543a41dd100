"""Output shared by the benchmark scripts: the JSON result, then a markdown
table, and the JSON again into --json_out when given."""

import json


def emit(result: dict, header: list, rows: list, json_out=None) -> None:
  print(json.dumps(result, indent=2))
  print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
  if json_out:
    with open(json_out, "w") as f:
      json.dump(result, f, indent=2)
