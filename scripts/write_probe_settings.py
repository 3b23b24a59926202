"""Write configs/probes.yaml from the probes' declared settings (a test keeps the two equal).

python scripts/write_probe_settings.py           # print it
python scripts/write_probe_settings.py --write   # overwrite configs/probes.yaml
"""

import sys
from pathlib import Path

from nandoctor.settings import settings_yaml

TARGET = Path(__file__).parents[1] / "configs" / "probes.yaml"

if __name__ == "__main__":
    if "--write" in sys.argv:
        TARGET.write_text(settings_yaml())
    else:
        print(settings_yaml(), end="")
