"""Run every side-by-side benchmark and print one summary: `make bench` or `python benchmarks/run_all.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SUITE = ["bench_pretrain.py", "bench_finetune.py", "bench_pretrain_clm.py", "bench_generate.py", "bench_serve.py"]


def main() -> None:
    for script in SUITE:
        if (HERE / script).exists():
            subprocess.run([sys.executable, str(HERE / script)], check=True)
    print("\n== summary (benchmarks/out/*.json)")
    for path in sorted((HERE / "out").glob("*.json")):
        result = json.loads(path.read_text())
        if "ratio" not in result:
            continue
        print(f"   {result['benchmark']:28s} {result['unit']:>16s}  lmforge {result['lmforge'][result['unit']]:10.1f}"
              f"  HF {result['trainer'][result['unit']]:10.1f}  ratio {result['ratio']:.2f}x  ({result['hardware']})")


if __name__ == "__main__":
    main()
