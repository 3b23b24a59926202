"""Print (or, with --write, update in README.md) the table of finding codes from nandoctor/codes.py.

python scripts/codes_table.py            # print it
python scripts/codes_table.py --write    # replace the table between the README's codes markers
"""

import re
import sys
from pathlib import Path

from nandoctor.codes import CODES

README = Path(__file__).parents[1] / "README.md"


def codes_table() -> str:
    rows = ["| code | meaning | usual fix |", "|---|---|---|"]
    rows += [f"| `{doc.code}` | {doc.meaning} | {doc.fix} |" for doc in sorted(CODES.values(), key=lambda d: d.stage)]
    return "\n".join(rows)


def write_readme() -> None:
    text = README.read_text()
    pattern = re.compile(r"(<!-- codes:start[^\n]*-->\n).*?(\n<!-- codes:end -->)", re.S)
    README.write_text(pattern.sub(lambda m: m.group(1) + codes_table() + m.group(2), text))


if __name__ == "__main__":
    write_readme() if "--write" in sys.argv else print(codes_table())
