#!/usr/bin/env python3
"""Write docs/configuration.md from the code: every command's flags, environment variables,
config dataclasses and file formats (see fracgpu/configref.py).

    python scripts/gen_config_reference.py          # regenerate
    python scripts/gen_config_reference.py --check  # exit 1 when the file is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fracgpu.configref import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], ROOT))
