"""The ntkc command line: compile, show, check, gram, predict, bench."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .errors import SpecError


def _compile(args) -> int:
    from .compiler import compile_file

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.specs:
        rel = Path(os.path.relpath(Path(spec).resolve(), out.resolve())).as_posix()
        if args.target == "jax":  # the finite network: <network>_jax.py
            from .codegen.jax_target import compile_finite
            from .frontend import program_from_file

            program = program_from_file(spec)
            _warn(program)
            target = out / f"{program.network}_jax.py"
            target.write_text(compile_finite(Path(spec).read_text(), spec, spec_name=rel))
            print(f"{spec} -> {target}")
            continue
        compiled = compile_file(spec, quad_degree=args.quad_degree, target=args.target,
                                spec_name=rel)
        _warn(compiled.program)
        target = out / f"{compiled.program.network}.py"
        target.write_text(compiled.source)
        print(f"{spec} -> {target}")
    return 0


def _show(args) -> int:
    from .compiler import compile_file
    from .show import latex_document, show

    compiled = compile_file(args.spec)
    _warn(compiled.program)
    if args.latex:  # a standalone document: ntkc show --latex SPEC > spec.tex
        print(latex_document(compiled.recursion, expand=args.expand))
        return 0
    style = "sympy" if args.sympy else "text"
    print(show(compiled.recursion, style, expand=args.expand, structure=args.structure))
    return 0


def _check(args) -> int:
    from .compiler import compile_file

    compiled = compile_file(args.spec)
    _warn(compiled.program)
    print(f"{args.spec}: ok (network {compiled.program.network})")
    return 0


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: cannot read {path}: {e}") from None


def _output_path(path: str, suffix: str, what: str) -> Path:
    """-o checked before any work: the file is written exactly there, with ``suffix``."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"-o {path}: is a directory; name a file, e.g. {out / ('k' + suffix)}")
    if out.suffix != suffix:
        raise ValueError(f"-o {path}: {what} is written as a {suffix} file; name it "
                         f"{out.with_suffix(suffix)}")
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(f"-o {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"-o {path}: directory {parent} is not writable")
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _scheduler(args):
    """--scheduler/--workers as Model.kernel's client/workers (None: a local cluster)."""
    if args.workers is not None and args.scheduler not in (None, "local"):
        raise ValueError("--workers sizes the local cluster; a cluster at --scheduler has "
                         "the workers its hosts started (dask worker ...)")
    return (None if args.scheduler in (None, "local") else args.scheduler), args.workers


def _gram_zarr(args, get) -> int:
    """-o K.zarr: one Dask task per tile into a resumable Zarr store."""
    from .runtime.model import load

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {args.output}: exists and is not a directory (a Zarr store)")
    if not out.parent.is_dir():
        raise ValueError(f"-o {args.output}: directory {out.parent} does not exist")
    client, workers = _scheduler(args)
    model = load(args.spec)
    x1 = _load_array(args.x1, "--x1")
    x2 = _load_array(args.x2, "--x2") if args.x2 else None
    model.kernel(x1, x2, get=get, tile=args.tile, progress=True, out=out, client=client,
                 workers=workers, restart=args.restart)
    print(f"wrote {out}")
    return 0


def _gram(args) -> int:
    from .runtime.model import load

    get = ("nngp", "ntk") if args.get == "both" else args.get
    if args.output.rstrip("/").endswith(".zarr"):
        return _gram_zarr(args, get)
    if args.scheduler or args.workers or args.restart:
        raise ValueError("--scheduler, --workers and --restart are for a Zarr store: "
                         "-o K.zarr")
    # One kernel: K.npy; both: one K.npz archive with arrays nngp and ntk.
    both = not isinstance(get, str)
    out = _output_path(args.output, ".npz" if both else ".npy",
                       "--get both (arrays nngp and ntk)" if both else f"the {get} kernel")
    model = load(args.spec)
    x1 = _load_array(args.x1, "--x1")
    x2 = _load_array(args.x2, "--x2") if args.x2 else None
    result = model.kernel(x1, x2, get=get, tile=args.tile, progress=True)
    with open(out, "wb") as f:  # a file object: numpy appends no second suffix
        if both:
            np.savez(f, nngp=result.nngp, ntk=result.ntk)
        else:
            np.save(f, result)
    print(f"wrote {out}")
    return 0


def _predict(args) -> int:
    from .predict.fit import fit
    from .runtime.model import load

    def npz(path, what):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            reason = "is a directory" if Path(path).is_dir() else str(e)
            raise ValueError(f"{what}: cannot read {path}: {reason}") from None
        if not hasattr(data, "files"):  # an .npy array, not an archive
            raise ValueError(f"{what}: {path} is not an .npz archive with arrays 'x' and 'y'")
        with data as f:
            if "x" not in f or "y" not in f:
                raise ValueError(f"{what}: {path} needs arrays 'x' and 'y'")
            return f["x"], f["y"]

    out = _output_path(args.output, ".npz", "the prediction") if args.output else None
    model = load(args.spec)
    x_train, y_train = npz(args.train, "--train")
    x_test, y_test = npz(args.test, "--test")
    t = None if args.t in (None, "inf") else float(args.t)
    if args.train_kernel:  # the train-train kernel in (or into) a Zarr store, solved blockwise
        if not args.train_kernel.rstrip("/").endswith(".zarr"):
            raise ValueError(f"--train-kernel {args.train_kernel}: name a .zarr store")
        if t is not None:  # before any cluster starts
            raise ValueError("--train-kernel: the blocked solve gives infinite-time "
                             "predictions only; drop --t, or predict without --train-kernel")
        from .runtime.distributed import connect

        # One cluster for the store's missing tiles and the blocked Cholesky (Dask's
        # workers spill to disk under their memory limits; local threads would not).
        with connect(*_scheduler(args)) as client:
            fitted = fit(model, x_train, y_train, kernel=args.kernel, t=t,
                         diag_reg=args.diag_reg, out=args.train_kernel, client=client)
    elif args.scheduler or args.workers:
        raise ValueError("--scheduler and --workers go with --train-kernel K.zarr")
    else:
        fitted = fit(model, x_train, y_train, kernel=args.kernel, t=t, diag_reg=args.diag_reg)
    mean = fitted.predict(x_test)
    mse = float(np.mean((mean - y_test) ** 2))
    print(f"test MSE: {mse:.6g}")
    if y_test.ndim == 2 and y_test.shape[1] > 1:
        acc = float(np.mean(mean.argmax(1) == y_test.argmax(1)))
        print(f"test accuracy: {acc:.4f}")
    if out is not None:
        with open(out, "wb") as f:
            np.savez(f, mean=mean)
        print(f"wrote {out}")
    return 0


def _bench(args) -> int:
    from .bench.main import main as bench_main

    return bench_main(args.rest)


def _warn(program) -> None:
    for w in program.warnings:
        print(w, file=sys.stderr)


def _dask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="local|tcp://HOST:PORT",
                   help="with a .zarr store: the Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=_positive_int,
                   help="local cluster's worker processes (default: one per core)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ntkc", description="Compile infinitely wide networks "
                                 "to NNGP / NTK kernels.")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write generated/<network>.py for each spec")
    c.add_argument("specs", nargs="+")
    c.add_argument("-o", "--output", default="generated")
    c.add_argument("--quad-degree", type=int, default=32)
    c.add_argument("--target", default="all", choices=["cpu", "cuda", "all", "jax"],
                   help="cpu: numba prange kernels; cuda: numba.cuda kernels (imported only "
                   "when kernel(device='cuda') runs); all: both (default); jax: the finite "
                   "network (init, apply, empirical_kernel) as <network>_jax.py")
    c.set_defaults(func=_compile)
    s = sub.add_parser("show", help="print the derived formulas")
    s.add_argument("spec")
    s.add_argument("--latex", action="store_true")
    s.add_argument("--sympy", action="store_true")
    s.add_argument("--expand", action="store_true", help="the output kernel as one formula")
    s.add_argument("--structure", action="store_true",
                   help="which position pairs each spatial line needs (diag or full)")
    s.set_defaults(func=_show)
    k = sub.add_parser("check", help="check a spec and report errors")
    k.add_argument("spec")
    k.set_defaults(func=_check)
    g = sub.add_parser("gram", help="compute a Gram matrix from .npy inputs")
    g.add_argument("spec")
    g.add_argument("--x1", required=True)
    g.add_argument("--x2")
    g.add_argument("--get", default="nngp", choices=["nngp", "ntk", "both"])
    g.add_argument("--tile", type=_positive_int, help="rows per tile (≥ 1)")
    g.add_argument("-o", "--output", required=True,
                   help="K.npy for one kernel; K.npz (arrays nngp, ntk) for --get both; "
                   "K.zarr: Dask tasks per tile into a Zarr store, resumable by rerunning")
    _dask_options(g)
    g.add_argument("--restart", action="store_true",
                   help="-o K.zarr holding another run: delete it and start again")
    g.set_defaults(func=_gram)
    p = sub.add_parser("predict", help="closed-form predictions from train/test .npz (x, y)")
    p.add_argument("spec")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--kernel", default="ntk", choices=["nngp", "ntk"])
    p.add_argument("--t", default=None, help="training time (default: infinite)")
    p.add_argument("--diag-reg", type=float, default=1e-4)
    p.add_argument("-o", "--output", help="MEAN.npz: the predicted mean (array 'mean')")
    p.add_argument("--train-kernel", metavar="K.zarr",
                   help="the train-train kernel's Zarr store (made by ntkc gram SPEC --x1 "
                   "TRAIN_X.npy --get KERNEL -o K.zarr, or here if missing): solved blockwise "
                   "with Dask, for kernels larger than memory (infinite t only)")
    _dask_options(p)
    p.set_defaults(func=_predict)
    b = sub.add_parser("bench", help="run the benchmarks (ntkc bench --help)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # REMAINDER would reject options: bench parses its own
        return _bench(argparse.Namespace(rest=argv[1:]))
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(e.report(), file=sys.stderr)
        return 2
    except (ValueError, OSError, MemoryError) as e:  # OSError: a missing file, a directory
        print(f"ntkc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
