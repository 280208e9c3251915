"""Writes flaxcls/data/imagenet_labels.txt from a tar of one ImageNet image per class.

    python tools/imagenet_labels.py imagenet-sample-1000.tar > flaxcls/data/imagenet_labels.txt

The tar's members are named ``<dir>/<wnid>_<readable_name>.JPEG``; sorting the wnids gives
the class index 0..999. Each output line is ``<wnid><TAB><readable name>``.
"""

import re
import sys
import tarfile

_MEMBER = re.compile(r"(?:.*/)?(n\d{8})_(.+)\.jpe?g", re.IGNORECASE)


def main(tar_path: str) -> None:
    names = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getnames():
            m = _MEMBER.fullmatch(member)
            if m:
                names[m.group(1)] = m.group(2).replace("_", " ")
    if len(names) != 1000:
        sys.exit(f"{tar_path}: expected 1000 distinct wnids, found {len(names)}")
    for wnid in sorted(names):
        print(f"{wnid}\t{names[wnid]}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tar", help="a tar of one ImageNet image per class, <wnid>_<name>.JPEG")
    main(ap.parse_args().tar)
