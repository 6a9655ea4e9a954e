"""The Zarr store of a distributed Gram matrix run (``Model.kernel(..., out="K.zarr")``).

One group per run: an array per kernel (``nngp``, ``ntk``), chunked in tiles, the inputs
(``x1``, and ``x2`` unless x2=None) in row blocks that the workers read, and a ``done``
array with one chunk per tile that holds the stamp (the start time in ns) of the run that
wrote it, 0 while the tile is missing. A worker writes a tile's kernel chunks
first and its ``done`` chunk last, and Zarr writes each chunk through a temporary file and
a rename, so a tile is either complete and marked, or unmarked and recomputed: the store
is its own manifest, and several workers write it at once without a lock (each chunk has
one writer). The group's attributes record what the run computes (spec and module
hashes, the inputs' sha256, dtype, tile, params, get, backend); a rerun with the same key
resumes, any other run is refused. For x2=None only the upper-triangle tiles are
computed, and each is written twice (the tile and its transpose), so every reader, plain
Zarr included, sees the symmetric matrix; unwritten chunks read as NaN, never as 0.

Imports zarr (the ``[distributed]`` extra); ``import ntkc`` never reaches this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

FORMAT = "ntkc-gram/1"  # the attribute that marks a group as one of these stores
KEYS = ("spec_sha256", "module", "network", "x1", "x2", "get", "params", "dtype", "tile",
        "backend")


class StoreMismatchError(ValueError):
    """The store at this path holds another run; resuming it would mix two matrices."""


def _create_array(group: Any, name: str, **kw: Any) -> Any:
    # Kernel entries are float noise to a compressor (a few % saved at the cost of CPU
    # on every write and every read of the blocked solve): stored raw.
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, compressors=None, **kw)
    return group.create_dataset(name, compressor=None, **kw)  # zarr 2.18


def tile_grid(shape: tuple[int, int], tile: int, symmetric: bool) -> list[tuple[int, int]]:
    """Tile indices (ti, tj) a run computes: all, or the upper triangle for x2=None."""
    n1, n2 = (-(-s // tile) for s in shape)
    return [(i, j) for i in range(n1) for j in range(n2) if not symmetric or j >= i]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [k for k in KEYS if k != "get" and old.get(k) != new.get(k)]
    if not set(new["get"]) <= set(old.get("get", [])):
        out.append("get")
    return out


def _describe(key: dict[str, Any], k: str) -> str:
    v = key.get(k)
    return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else repr(v)


class GramStore:
    """An open store: ``arrays`` by kernel name, ``done`` markers, the recorded ``key``."""

    def __init__(self, path: str | Path, key: dict[str, Any], shape: tuple[int, int],
                 symmetric: bool, restart: bool = False,
                 inputs: tuple[np.ndarray, np.ndarray | None] | None = None):
        self.path = Path(path)
        self.shape = shape
        self.symmetric = symmetric
        self.tile = int(key["tile"])
        group = self._open_existing(key, restart)
        if group is None:
            if inputs is None:
                raise ValueError(f"{self.path}: no store there to open")
            group = self._create(key, inputs)
        self.group = group
        self.key = dict(group.attrs["key"])
        self.names = tuple(self.key["get"])  # may be more than asked: a superset resumes
        self.arrays = {n: group[n] for n in self.names}
        self.done_array = group["done"]

    def _open_existing(self, key: dict[str, Any], restart: bool) -> Any:
        if not self.path.exists():
            return None
        try:
            group = zarr.open_group(str(self.path), mode="r+")
            attrs = dict(group.attrs)
        except Exception:  # noqa: BLE001 - not a Zarr group at all: same answer
            attrs = {}
        if attrs.get("format") != FORMAT:
            what = "a directory" if self.path.is_dir() else "a file"
            raise StoreMismatchError(
                f"{self.path} exists and is {what}, not an ntkc Gram store: choose another "
                "path (ntkc never deletes what it did not write, even with restart)")
        diff = _differences(dict(attrs["key"]), key)
        if attrs.get("shape") != list(self.shape):
            diff.append("shape")
        if not diff:
            return group
        if restart:
            shutil.rmtree(self.path)
            return None
        lines = "; ".join(f"{k}: store {_describe(attrs['key'], k)}, request "
                          f"{_describe(key, k)}" for k in diff if k != "shape")
        raise StoreMismatchError(
            f"{self.path} holds another Gram matrix run (it differs in: {', '.join(diff)}"
            f"{'; ' + lines if lines else ''}); its tiles cannot be mixed with this one's: "
            "write to another path, or pass restart=True (CLI: --restart) to delete it")

    def _create(self, key: dict[str, Any], inputs: tuple[np.ndarray, np.ndarray | None]) -> Any:
        group = zarr.open_group(str(self.path), mode="w")
        # The inputs live in the store, in row blocks that workers read themselves: data
        # scattered from the client would be lost with the worker holding it, and the
        # store (on a filesystem every worker shares) survives any of them.
        for name, x in zip(("x1", "x2"), inputs):
            if x is not None:
                arr = _create_array(group, name, shape=x.shape, dtype=x.dtype,
                                    chunks=(self.tile, *x.shape[1:]))
                arr[...] = x
        chunks = (self.tile, self.tile)
        for name in key["get"]:
            _create_array(group, name, shape=self.shape, chunks=chunks, dtype=key["dtype"],
                          fill_value=np.nan)
        grid = tuple(-(-s // self.tile) for s in self.shape)
        _create_array(group, "done", shape=grid, chunks=(1, 1), dtype="int64", fill_value=0)
        # Written last: a group without them (a crash right here) is refused, not resumed.
        group.attrs.update({"format": FORMAT, "key": key, "shape": list(self.shape),
                            "symmetric": self.symmetric})
        return group

    def stamps(self) -> np.ndarray:
        """The ``done`` grid: per tile, the stamp of the run that wrote it (0: missing)."""
        return np.asarray(self.done_array[...])

    def done(self) -> set[tuple[int, int]]:
        s = self.stamps()
        return {t for t in tile_grid(self.shape, self.tile, self.symmetric) if s[t] != 0}


def recorded_tile(path: str | Path) -> int | None:
    """The tile size of the ntkc store at ``path`` (None: no such store), so that a rerun
    or a reader that does not name one resumes the store as it was made."""
    if not Path(path).is_dir():
        return None
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a store: GramStore says so, with the way out
        return None
    return int(attrs["key"]["tile"]) if attrs.get("format") == FORMAT else None


def read_rows(path: str, name: str, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of the stored input ``name`` ("x1" or "x2")."""
    return np.asarray(zarr.open_group(path, mode="r")[name][start:stop])


def write_tile(path: str, names: tuple[str, ...], ti: int, tj: int, tile: int,
               blocks: tuple[np.ndarray, ...], symmetric: bool, stamp: int) -> None:
    """Write one tile's chunks (and the transposed chunks below the diagonal), then mark
    it done: the marker is the last write, so a tile is never marked before its data."""
    group = zarr.open_group(path, mode="r+")
    i0, j0 = ti * tile, tj * tile
    for name, block in zip(names, blocks):
        arr = group[name]
        r, c = block.shape
        arr[i0:i0 + r, j0:j0 + c] = block
        if symmetric and ti != tj:
            arr[j0:j0 + c, i0:i0 + r] = block.T
    group["done"][ti, tj] = stamp


def open_gram(path: str | Path, get: str | tuple[str, ...] | None = None) -> Any:
    """The kernels of a complete store as Dask arrays (chunks = tiles), lazily read.

    get: a name, or a tuple of them (default: all the store holds; a tuple gives a
    namedtuple). An incomplete store is refused: rerun the command that made it."""
    import collections

    import dask.array as da

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot open as a Zarr Gram store: {e}") from None
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ntkc Gram store (no {FORMAT!r} attribute)")
    key = attrs["key"]
    names = tuple(key["get"]) if get is None else (get,) if isinstance(get, str) else tuple(get)
    missing = [n for n in names if n not in key["get"]]
    if missing:
        raise ValueError(f"{path} holds {key['get']}, not {missing}")
    shape, tile = tuple(attrs["shape"]), int(key["tile"])
    stamps = np.asarray(group["done"][...])
    grid = tile_grid(shape, tile, bool(attrs["symmetric"]))
    left = sum(1 for t in grid if stamps[t] == 0)
    if left:
        raise ValueError(f"{path} is incomplete: {left} of {len(grid)} tiles are missing; "
                         "rerun the command that made it (it resumes)")
    arrays = [da.from_zarr(group[n]) for n in names]
    if isinstance(get, str):
        return arrays[0]
    return collections.namedtuple("Kernels", names)(*arrays)
