"""Print the README's table of finding codes from nandoctor/codes.py (the one source).

    python scripts/codes_table.py     # paste between the README's codes markers
"""

from nandoctor.codes import CODES


def codes_table() -> str:
    rows = ["| code | meaning | usual fix |", "|---|---|---|"]
    rows += [f"| `{doc.code}` | {doc.meaning} | {doc.fix} |" for doc in sorted(CODES.values(), key=lambda d: d.stage)]
    return "\n".join(rows)


if __name__ == "__main__":
    print(codes_table())
