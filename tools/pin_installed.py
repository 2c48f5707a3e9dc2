"""Print ``name==version`` for the installed torch, torchvision and numpy, one a line.

tools/install_mmdet.sh and tools/install_detectron2.sh give this to pip as constraints, so that nothing
they install replaces the environment's torch, torchvision or numpy.
"""

from importlib import metadata

PINNED = ("torch", "torchvision", "numpy")

if __name__ == "__main__":
    for name in PINNED:
        try:
            print(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
