"""mattransfer: transfer learning for small materials-property datasets.

``import mattransfer`` stays light (no torch, no package metadata scan): the API loads on first use.

    model = mattransfer.load("runs/x/model.ckpt")
    model.predict(structures)           # pymatgen Structures, ASE Atoms or file paths → numpy array
    model.embed(structures)             # (n, d) latent vectors
    summary = mattransfer.train("options.yaml")   # or a dict of options
    picks = mattransfer.select("select.yaml")     # the structures to label next
"""

__all__ = ["Model", "__version__", "load", "select", "train"]


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mattransfer")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    if name in ("Model", "load", "select", "train"):
        from mattransfer import api

        return getattr(api, name)
    raise AttributeError(f"module 'mattransfer' has no attribute {name!r}")
