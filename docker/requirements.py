"""Print the requirements of an image from pyproject.toml: the dependencies plus one extra's.

Usage: python3 requirements.py PYPROJECT EXTRA [--only NAME,NAME]

The Dockerfiles install these in a layer of their own, which changes only with pyproject.toml,
then the project's wheel without dependencies: a change to the code does not download PyTorch
again. `--only` keeps the named distributions (the serving image takes torch and torchvision
from another index first).
"""
import re
import sys
import tomllib


def main(argv: list[str]) -> None:
    pyproject, extra, *rest = argv
    project = tomllib.load(open(pyproject, "rb"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"][extra]
    if rest[:1] == ["--only"]:
        names = set(rest[1].split(","))
        requirements = [r for r in requirements if re.split(r"[<>=!~\[;\s]", r, 1)[0] in names]
    print("\n".join(requirements))


if __name__ == "__main__":
    main(sys.argv[1:])
