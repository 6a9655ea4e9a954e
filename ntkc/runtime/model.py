"""Runtime: load a spec (compiled once per spec hash) or a generated module,
and fill Gram matrices in tiles, with the memory checked before allocation.

Two levels of tiles: host tiles here (out-of-core ``.npy`` maps, progress), and,
for device="cuda", device tiles inside the generated module (sized from the free
GPU memory and streamed back to host memory)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..compiler import Compiled, compile_file
from ..semantics.quadrature import DEFAULT_DEGREE
from .outofcore import Progress, memory_advice, num_threads, run_key, work_bytes


def cache_dir() -> Path:
    root = os.environ.get("NTKC_CACHE_DIR") or Path.home() / ".cache" / "ntkc"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def module_name(path: str | Path) -> str:
    """The name a generated module gives itself: ``ntkc_generated_<file stem>_<content
    hash>``. Namespaced, so a network called numpy never replaces sys.modules["numpy"];
    the same in every process, as numba's on-disk cache needs (it re-imports a cached
    function's module by name). The module computes it too, from its own file (see
    ntkc.codegen.driver_template.SELF_IMPORT): the two must agree."""
    path = Path(path)
    stem = re.sub(r"\W", "_", path.name.rsplit(".", 1)[0], flags=re.ASCII)
    return f"ntkc_generated_{stem}_{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def import_module_file(path: str | Path) -> ModuleType:
    """Import a generated module by path, under its own name (``module_name``)."""
    path = Path(path)
    name = module_name(path)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, so the module finds itself there (no search).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(name) is module:
            del sys.modules[name]
        raise
    return module


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or a large number if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def gram_bytes(n1: int, n2: int, outputs: int, itemsize: int) -> int:
    return n1 * n2 * outputs * itemsize


class Model:
    """A compiled network: ``.kernel(...)``, ``.formulas()``, ``.params``."""

    def __init__(self, module: ModuleType, compiled: Compiled | None = None):
        self.module = module
        self.compiled = compiled
        self._with_tangents: ModuleType | None = None

    @property
    def params(self) -> dict[str, float]:
        return dict(self.module.PARAMS)

    @property
    def network(self) -> str:
        return self.module.NETWORK

    @property
    def input_shape(self) -> tuple[int | None, ...]:  # None: open (vector[*])
        return tuple(self.module.INPUT_SHAPE)

    def formulas(self) -> dict[str, Any]:
        """The derived recursion as sympy objects: {quantity: expression}, plus outputs."""
        if self.compiled is None:
            raise ValueError("formulas() needs the spec: load the .ntk file, not the module")
        rec = self.compiled.recursion
        out = {a.symbol: a.expr for a in rec.point + rec.pair}
        out["nngp"] = rec.outputs["nngp"]
        out["ntk"] = rec.outputs["ntk"]
        return out

    def _grad_module(self) -> ModuleType:
        """The spec compiled with tangents (ntkc.runtime.gradients), once per Model."""
        if self._with_tangents is None:
            if self.compiled is None:
                raise ValueError("kernel gradients need the spec: load the .ntk file, not "
                                 "the generated module")
            from .gradients import grad_source

            degree = int(self.module.COMPILE_OPTIONS.get("quad_degree", DEFAULT_DEGREE))
            self._with_tangents = load_source(grad_source(self.compiled, degree),
                                              f"{self.network}_grad")
        return self._with_tangents

    # Jupyter renders a Model as its spec, structure and formulas (None: loaded from a
    # generated module, without its spec: the plain repr then).
    def _repr_html_(self) -> str | None:
        from ..show import html_report

        return None if self.compiled is None else html_report(self.compiled.recursion)

    def _repr_latex_(self) -> str | None:
        from ..show import latex_math

        return None if self.compiled is None else f"$${latex_math(self.compiled.recursion)}$$"

    def kernel(
        self,
        x1: np.ndarray,
        x2: np.ndarray | None = None,
        get: str | tuple[str, ...] = ("nngp", "ntk"),
        params: dict[str, float] | None = None,
        backend: str = "numba",
        tile: int | None = None,
        progress: bool | None = None,
        out_dir: str | Path | None = None,
        memory_limit: int | None = None,
        device: str | None = None,
        device_tile: int | tuple[int, int] | None = None,
        restart: bool = False,
        grad: str | tuple[str, ...] | None = None,
        out: str | Path | None = None,
        client: Any = None,
        workers: int | None = None,
    ):
        """Gram matrices; large ones are filled tile by tile.

        tile: rows/cols per host tile (default: whole matrix when it fits in ~1 GiB of
        work memory, else 4096; with device="cuda" the whole matrix unless out_dir is
        given). out_dir: write the results as .npy memory maps there (out-of-core), with
        a ``progress.json`` manifest of the finished tiles: a rerun with the same out_dir,
        inputs and module resumes; a different run there is refused unless restart=True.
        memory_limit: bytes allowed in memory (default: 80% of MemAvailable); the run is
        refused before anything is allocated when what it holds (outputs, point rows,
        per-thread scratch, temporaries) exceeds it.
        device: "cpu" or "cuda" (default: the module's first target, see
        ``module.TARGETS``); device_tile: rows (or (rows, cols)) per GPU tile, default
        from the free device memory.
        grad: param name(s): returns (kernels, {name: kernels' derivatives by it}), exact
        derivatives of the recursion (ntkc.runtime.gradients), on the CPU.
        out: a ``.zarr`` path: one Dask task per tile (default tile 1024) into a resumable
        Zarr store (ntkc.runtime.distributed; needs ``pip install 'ntkc[distributed]'``),
        returned as Dask arrays; client: a dask.distributed Client or a scheduler address
        (default: a LocalCluster of ``workers`` processes, one per core).
        """
        if grad is not None:  # ∂K, ∂Θ by params: a module with tangents, whole matrices
            if out_dir is not None or out is not None or device not in (None, "cpu"):
                raise ValueError("grad= computes whole matrices on the CPU: leave out out_dir, "
                                 "out and device, and pass x2 in blocks for large runs")
            from .gradients import kernel_with_grad

            return kernel_with_grad(self._grad_module(), x1, x2, get, params, grad, backend,
                                    available_memory())
        extra = self._device_options(device, device_tile)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer))
                                 or tile <= 0):
            raise ValueError(f"tile must be a positive number of rows, got {tile!r}")
        x1 = self.module._check_inputs("x1", x1)
        symmetric = x2 is None or x2 is x1
        x2c = x1 if symmetric else self.module._check_inputs("x2", x2)
        names = (get,) if isinstance(get, str) else tuple(get)
        if not names or any(g not in ("nngp", "ntk") for g in names):
            raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
        self.module.param_vector(params)  # bad params: a ValueError before any work
        dtype = np.float32 if x1.dtype == np.float32 and x2c.dtype == np.float32 else np.float64
        if out is not None:
            if out_dir is not None:
                raise ValueError("pass out= (a Zarr store) or out_dir= (.npy maps), not both")
            from .distributed import kernel_to_store  # dask and zarr: only from here

            return kernel_to_store(self.module, import_module_file, x1,
                                   None if symmetric else x2c, get, params, dtype, backend,
                                   extra, out, client=client, workers=workers, tile=tile,
                                   progress=progress, restart=restart)
        n1, n2 = len(x1), len(x2c)
        itemsize = np.dtype(dtype).itemsize
        on_gpu = backend == "numba" and (device or self.targets[0]) == "cuda"
        if tile is None:
            # The cuda path allocates only the outputs on the host (it tiles the device
            # itself): one host tile unless the results go to disk.
            small = n1 * n2 * 8 * 3 <= 2**30
            tile = max(n1, n2) if small or (on_gpu and out_dir is None) else (
                16384 if on_gpu else 4096)
        tile = int(tile)
        blocks = [(i, j) for i in range(0, n1, tile) for j in range(0, n2, tile)
                  if not symmetric or j >= i]
        need, limit = self._check_memory(names, n1, n2, tile, itemsize, backend, on_gpu,
                                         out_dir, memory_limit, len(blocks), symmetric)
        show = progress if progress is not None else sys.stderr.isatty()
        if show:  # before anything is allocated: what this run will hold, and where
            where = f"on disk in {out_dir}" if out_dir is not None else "in memory"
            pairs = n1 * (n1 + 1) // 2 if symmetric else n1 * n2
            print(f"ntkc: {len(names)} Gram matrix(es) {n1}×{n2} {np.dtype(dtype).name}: "
                  f"{need / 2**30:.2f} GiB {where} (limit {limit / 2**30:.1f} GiB), "
                  f"{pairs:,} pairs in {len(blocks)} tile(s)", file=sys.stderr, flush=True)
        if len(blocks) == 1 and out_dir is None:
            return self.module.kernel(x1, None if symmetric else x2c, get, params, backend,
                                      **extra)
        state = None
        if out_dir is None:
            outs = {n: np.empty((n1, n2), dtype) for n in names}
        else:
            key = run_key(self.module, x1, None if symmetric else x2c, names, params, dtype,
                          tile, backend)
            state = Progress(out_dir, key, (n1, n2), restart=restart)
            outs = state.maps
        todo = [b for b in blocks if state is None or b not in state.done]
        # tqdm.auto: a text bar on a terminal, a widget in a notebook; a resumed run starts
        # at the tiles already done, so the rate and ETA are of this run's tiles
        bar = tqdm(total=len(blocks), initial=len(blocks) - len(todo), unit="tile",
                   desc="ntkc", disable=not show, file=sys.stderr)
        for i, j in todo:
            a = x1[i:i + tile]
            if symmetric and i == j:
                res = self.module.kernel(a, None, names, params, backend, **extra)
            else:
                b = (x1 if symmetric else x2c)[j:j + tile]
                res = self.module.kernel(a, b, names, params, backend, **extra)
            for name, block in zip(names, res):
                outs[name][i:i + len(block), j:j + block.shape[1]] = block
                if symmetric and i != j:
                    outs[name][j:j + block.shape[1], i:i + len(block)] = block.T
            if state is not None:
                state.mark((i, j))
            bar.update(1)
        bar.close()
        if state is not None:
            state.finish()
        if isinstance(get, str):
            return outs[get]
        import collections

        return collections.namedtuple("Kernels", names)(*(outs[n] for n in names))

    def _check_memory(self, names, n1, n2, tile, itemsize, backend, on_gpu, out_dir,
                      memory_limit, n_blocks, symmetric) -> tuple[int, int]:
        """(bytes the run holds, limit); MemoryError, with the way out, when over."""
        limit = memory_limit if memory_limit is not None else int(0.8 * available_memory())
        threads = num_threads()
        whole = n_blocks == 1 and out_dir is None
        rows, cols = (n1, n2) if whole else (min(tile, n1), min(tile, n2))
        parts = work_bytes(self.module, rows, cols, names, itemsize, backend, on_gpu, threads)
        if symmetric and whole:  # x2 is x1: one set of point rows and inputs
            for k in ("point rows", "inputs (float64)"):
                if k in parts:
                    parts[k] //= 2
        held = 0 if out_dir is not None or whole else gram_bytes(n1, n2, len(names), itemsize)
        if held:
            parts["Gram matrices"] = held
        need = sum(parts.values())
        if need > limit:
            outputs = held or gram_bytes(n1, n2, len(names), itemsize)
            raise MemoryError(memory_advice(self.module, parts, need, limit, threads, backend,
                                            0 if out_dir is not None else outputs))
        return need, limit

    @property
    def targets(self) -> tuple[str, ...]:
        """Devices this module has kernels for ("cpu", "cuda"); the first is the default."""
        return tuple(getattr(self.module, "TARGETS", ("cpu",)))

    def _device_options(self, device: str | None, device_tile) -> dict[str, Any]:
        # Modules without TARGETS (cpu-only emitters) take no device arguments.
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if not hasattr(self.module, "TARGETS"):
            if device == "cuda":
                raise ValueError(f"{self.network}: this network's module has no cuda kernels "
                                 "(its emitter supports the cpu target only): use device='cpu'")
            return {}
        out: dict[str, Any] = {} if device is None else {"device": device}
        if device_tile is not None:
            out["device_tile"] = device_tile
        return out

    def finite(self) -> ModuleType:
        """The spec as a finite network: its jax module (``ntkc compile --target jax``:
        init, apply, empirical_kernel), compiled once per spec hash and cached like the
        kernel modules. Needs jax (``pip install "ntkc[finite]"``)."""
        from ..codegen.jax_target import compile_finite

        if self.compiled is not None:
            text, filename = self.compiled.program.source, self.compiled.program.filename
        else:  # a generated module: its spec, recorded relative to it
            spec = Path(self.module.__file__).parent / self.module.SPEC_FILE
            text, filename = spec.read_text(), spec.as_posix()
        return load_source(compile_finite(text, filename), f"{self.network}_jax")

    def monte_carlo_kernel(self, x1, x2=None, width: int | dict[str, int] = 512,
                           n_samples: int = 16, seed: int = 0,
                           get: str | tuple[str, ...] = ("nngp", "ntk"),
                           params: dict[str, float] | None = None):
        """The mean of the empirical NNGP and NTK of n_samples random finite networks of
        this spec (``finite()``), of width ``width`` (an int for every hidden line, or a
        dict line -> width): Monte Carlo estimates of ``kernel``'s, returned the same way.
        See ntkc.runtime.finite."""
        from .finite import monte_carlo_kernel

        return monte_carlo_kernel(self.finite(), x1, x2, width, n_samples, seed, get, params)

    def fit(self, x_train, y_train, **options):
        """Closed-form predictor of the infinitely wide network trained on (x, y):
        see ntkc.predict.fit.fit for the options (kernel, t, diag_reg, learning_rate)."""
        from ..predict.fit import fit

        return fit(self, x_train, y_train, **options)


class StaleModuleError(ValueError):
    pass


def load(path: str | Path, quad_degree: int = DEFAULT_DEGREE, target: str = "all") -> Model:
    """Load a spec (.ntk: compiled once per content hash, cached) or a generated module.

    target (specs only): "all" (cpu and cuda kernels; numba.cuda is imported only when
    kernel(device="cuda") runs), "cpu" or "cuda"."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".py":
        module = import_module_file(path)
        spec = path.parent / module.SPEC_FILE  # recorded relative to the module
        if spec.exists():
            sha = hashlib.sha256(spec.read_bytes()).hexdigest()
            if sha != module.SPEC_SHA256:
                raise StaleModuleError(
                    f"{path} was compiled from an older {spec} (sha256 differs): "
                    f"regenerate it with `ntkc compile {spec}`")
        return Model(module)
    compiled = compile_file(path, quad_degree=quad_degree, target=target)
    return Model(load_source(compiled.source, compiled.program.network), compiled)


def load_source(source: str, stem: str) -> ModuleType:
    """A generated module's source, cached by its hash (``{stem}_{hash}.py``), imported."""
    data = source.encode()
    cached = cache_dir() / f"{stem}_{hashlib.sha256(data).hexdigest()[:16]}.py"
    if not cached.exists():
        _write_atomically(cached, data)
    return import_module_file(cached)


def _write_atomically(path: Path, data: bytes) -> None:
    # Processes loading one spec on an empty cache write the same file at once: each
    # writes its own temporary file, then renames it over the target in one step, so
    # no reader ever sees a partial file and no writer loses its temporary file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
