"""Copy the installed files of one distribution into an overlay tree, under their absolute paths.

Usage: overlay.py DISTRIBUTION DEST. Used by the Dockerfile's devel stage so that the runtime stage
can add the server's own files (package, .pyc, dist-info, console scripts) as one small layer on top
of the dependency venv.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path


def main() -> None:
    name, dest = sys.argv[1], Path(sys.argv[2])
    dist = importlib.metadata.distribution(name)
    copied = 0
    for entry in dist.files or ():
        # normpath, not resolve: console scripts are recorded as ../../../bin/x, and the venv's
        # python symlinks must not be followed out of the venv.
        source = Path(os.path.normpath(entry.locate()))
        candidates = [source]
        if source.suffix == ".py":
            candidates.append(Path(importlib.util.cache_from_source(str(source))))
        for path in candidates:
            if path.is_file():
                target = dest / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
    if copied == 0:
        sys.exit(f"overlay.py: no installed files found for {name}")
    print(f"overlay.py: {copied} files of {name} {dist.version} -> {dest}")


main()
