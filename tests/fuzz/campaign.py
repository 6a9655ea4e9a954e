"""A fuzzing campaign outside pytest: many programs, counts by violation class, minimal
reproducers.

    python tests/fuzz/campaign.py --programs 10000 --numba-every 20 --seed 1 \\
        --out /tmp/campaign.json [--syntax 10000] [--findings /tmp/fuzz_findings.md]
    python tests/fuzz/campaign.py --summarize /tmp/chunks/*.json   # add up campaigns

Kernel campaign: random valid programs (tests/fuzz/programs.py), each checked by
check_program (tests/fuzz/checks.py) on the numpy backend, every --numba-every'th also
against the numba kernels; classes: rejected (a SpecError on a program the generator
believes valid), traceback, hang, non-finite, asymmetric, inconsistent, non-psd,
backend, oracle, continuity. Syntax campaign: tests/fuzz/syntax.py's inputs; classes:
traceback, hang, unpositioned, bad-source.

Failures are shrunk (lines deleted or bypassed, arguments dropped, while the same class of
violation remains) and the reproducers saved to --repro-dir and appended to --findings,
one per distinct (class, message shape).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fuzz, oracle

from fuzz.checks import check_program, violation_class
from fuzz.programs import random_program
from fuzz.syntax import (
    Hang,
    check_syntax,
    long_comment_spec,
    long_spec,
    run_limited,
    syntax_inputs,
)


def signature(v: str) -> str:
    """A violation with its numbers and file names blurred: one finding per shape."""
    v = re.sub(r"\S+\.ntk:\d+:\d+", "FILE:L:C", v)
    v = re.sub(r'File "[^"]*/([^/"]*)"', r'File "\1"', v)  # no directories
    v = re.sub(r"_[0-9a-f]{16}\b", "", v)  # generated modules are named by their hash
    v = re.sub(r"line \d+", "line N", v)
    v = re.sub(r"'[A-Za-z_]\w*'", "'NAME'", v)
    v = re.sub(r"\b(nngp|ntk)\b", "K", v)
    return re.sub(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?", "#", v)[:160]


ZERO_INPUTS = True  # also check zero inputs / blank positions (class zero-input)
# Counted, but no finding: documented refusals (see fuzz.checks.CLASSES).
NOT_FINDINGS = ("refused",)
# Classes whose shrinking keeps the exact message shape (else: the class).
EXACT = ("rejected", "traceback", "oracle-error")


# -- shrinking -------------------------------------------------------------------------------
_ASSIGN = re.compile(r"^(\w+)\s*=\s*(.*)$")


def _candidates(text: str):
    """Smaller variants of a spec: lines deleted or bypassed, kwargs dropped."""
    lines = text.splitlines()
    out_name = next((ln.split()[1] for ln in lines if ln.startswith("output ")), None)
    for i, ln in enumerate(lines):
        if ln.startswith(("network", "input", "output")):
            continue
        rest = lines[:i] + lines[i + 1:]
        m = _ASSIGN.match(ln)
        if m is None:  # param / nonlin / parameterization / comment: just delete
            yield "\n".join(rest) + "\n"
            continue
        name = m.group(1)
        refs = [r for r in dict.fromkeys(re.findall(r"\b([A-Za-z_]\w*)\b", m.group(2)))
                if any(_ASSIGN.match(x) and _ASSIGN.match(x).group(1) == r for x in lines[:i])
                or r == "x"]
        for r in refs:  # bypass the line: later readers read one of its inputs
            body = [re.sub(rf"\b{name}\b", r, x) if k > i - 1 else x
                    for k, x in enumerate(rest)]
            yield "\n".join(body) + "\n"
        if name != out_name:
            yield "\n".join(rest) + "\n"
    for i, ln in enumerate(lines):
        for kw in re.finditer(r",\s*\w+\s*=\s*(\[[^\]]*\]|[^,)]+)", ln):
            yield "\n".join(lines[:i] + [ln[:kw.start()] + ln[kw.end():]] + lines[i + 1:]) + "\n"


def shrink(text: str, still_fails, budget_s: float = 60.0) -> str:
    """Greedy shrinking while still_fails(candidate)."""
    start = time.time()
    changed = True
    while changed and time.time() - start < budget_s:
        changed = False
        for cand in _candidates(text):
            if time.time() - start > budget_s:
                break
            if len(cand) < len(text) and still_fails(cand):
                text, changed = cand, True
                break
    return text


# -- the campaigns ---------------------------------------------------------------------------
class Findings:
    def __init__(self, path: str | None, repro_dir: Path, head: str):
        self.path, self.repro_dir, self.head = path, repro_dir, head
        self.seen: dict[str, str] = {}
        repro_dir.mkdir(parents=True, exist_ok=True)

    def _reported(self) -> set[str]:
        # Signatures already in the findings file (from earlier campaigns): <findings>.sigs
        if not self.path or not Path(self.path + ".sigs").exists():
            return set()
        return set(Path(self.path + ".sigs").read_text().splitlines())

    def new(self, sig: str) -> bool:
        return sig not in self.seen and sig not in self._reported()

    def add(self, sig: str, cls: str, violation: str, text: str, origin: str) -> None:
        self.seen[sig] = text
        if self.path:
            with open(self.path + ".sigs", "a") as f:
                f.write(sig.replace("\n", " ") + "\n")
        k = len(self.seen)
        repro = self.repro_dir / f"{k:03d}_{cls}.ntk"
        repro.write_text(text)
        if len(text) > 2000:  # keep the findings readable: the whole spec is in repro
            text = f"{text[:1500]}\n... ({len(text)} characters in all: {repro})"
        if self.path:
            with open(self.path, "a") as f:
                f.write(f"\n### {cls} ({origin}, at {self.head})\n\n{violation}\n\n```\n"
                        f"{text.rstrip()}\n```\n")


def _limited_check(text, seed, numba, seconds):
    before = set(sys.modules)
    try:
        return run_limited(lambda: check_program(text, np.random.default_rng(seed), numba=numba,
                                                 zero_inputs=ZERO_INPUTS), seconds)
    except Hang:
        return [f"hang: check_program ran past {seconds} s"]
    finally:  # forget the generated modules: a campaign imports thousands
        cache = os.environ.get("NTKC_CACHE_DIR", "")
        for name in set(sys.modules) - before:
            if cache and str(getattr(sys.modules[name], "__file__", "")).startswith(cache):
                del sys.modules[name]


def kernel_campaign(args, findings: Findings, save=lambda partial: None) -> dict:
    counts: collections.Counter = collections.Counter()
    by_sig: collections.Counter = collections.Counter()
    seeds: dict[str, list[int]] = collections.defaultdict(list)  # class -> program seeds
    numba_checked = 0
    start = time.time()
    for i in range(args.programs):
        seed = args.seed * 1_000_003 + i
        text = random_program(random.Random(seed)).text
        numba = args.numba_every > 0 and i % args.numba_every == 0
        numba_checked += numba
        violations = _limited_check(text, seed, numba, args.time_limit)
        classes = {violation_class(v) for v in violations}
        counts.update(classes)
        for cls in classes:
            seeds[cls].append(seed)
        counts["programs"] += 1
        counts["clean"] += not violations
        for v in violations:
            cls, sig = violation_class(v), signature(v)
            by_sig[sig] += 1
            if cls in NOT_FINDINGS:
                continue
            if cls not in EXACT:  # a numeric class: its message says little; once per commit
                sig = f"{sig} @ {findings.head}"
            if findings.new(sig) and args.shrink:
                def still(cand, cls=cls, sig=sig, seed=seed, numba=numba):
                    got = _limited_check(cand, seed, numba, args.time_limit)
                    if cls in EXACT:
                        return sig in {signature(w) for w in got}
                    return cls in {violation_class(w) for w in got}
                small = shrink(text, still, args.shrink_s)
                final = _limited_check(small, seed, numba, args.time_limit)
                shown = next((w for w in final if violation_class(w) == cls), v)
                findings.add(sig, cls, shown, small, f"kernel seed {seed}")
                print(f"[{i}] new {cls}: {shown}\n{small}", flush=True)
        if (i + 1) % args.report_every == 0:
            print(f"[{i + 1}/{args.programs}] {time.time() - start:.0f}s "
                  f"{dict(counts)}", flush=True)
            save({"counts": dict(counts), "numba_checked": numba_checked,
                  "signatures": dict(by_sig.most_common()), "seeds": seeds,
                  "seconds": time.time() - start, "partial": True})
    return {"counts": dict(counts), "numba_checked": numba_checked,
            "signatures": dict(by_sig.most_common()), "seeds": seeds,
            "seconds": time.time() - start}


def syntax_campaign(args, findings: Findings, save=lambda partial: None) -> dict:
    counts: collections.Counter = collections.Counter()
    by_sig: collections.Counter = collections.Counter()
    start = time.time()
    rng = random.Random(args.seed)
    inputs = list(syntax_inputs(rng, args.syntax))
    inputs += [("long", long_spec()), ("long-comments", long_comment_spec())]
    for i, (label, text) in enumerate(inputs):
        violations = check_syntax(text, args.time_limit)
        counts["inputs"] += 1
        counts.update({violation_class(v) for v in violations})
        for v in violations:
            cls, sig = violation_class(v), signature(v)
            by_sig[sig] += 1
            if findings.new(sig):
                small = text
                if args.shrink and len(text) < 20_000:
                    def still(cand, sig=sig):
                        return sig in {signature(w) for w in check_syntax(cand, 20)}
                    small = shrink(text, still, args.shrink_s)
                findings.add(sig, cls, v, small, f"syntax input {i} ({label})")
                print(f"[syntax {i}] new {cls}: {v}\n{small[:500]!r}", flush=True)
        if (i + 1) % args.report_every == 0:
            print(f"[syntax {i + 1}/{len(inputs)}] {time.time() - start:.0f}s {dict(counts)}",
                  flush=True)
            save({"counts": dict(counts), "signatures": dict(by_sig.most_common()),
                  "seconds": time.time() - start, "partial": True})
    return {"counts": dict(counts), "signatures": dict(by_sig.most_common()),
            "seconds": time.time() - start}


def _head() -> str:
    try:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def summarize(paths: list[str]) -> dict:
    """Counts of several campaign JSONs added up, per commit and kind."""
    total: dict = {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        for kind in ("kernel", "syntax"):
            if kind in d:
                c = total.setdefault(f"{kind} @ {d.get('head', '?')}", collections.Counter())
                c.update(d[kind]["counts"])
                if kind == "kernel":
                    c["numba_checked"] += d[kind].get("numba_checked", 0)
    for key, c in sorted(total.items()):
        print(key, json.dumps(dict(c)))
    return total


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--summarize"]:
        summarize(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--numba-every", type=int, default=10, help="0: never")
    ap.add_argument("--syntax", type=int, default=0, help="syntax inputs (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/tmp/campaign.json")
    ap.add_argument("--repro-dir", default=None, help="default: next to --out")
    ap.add_argument("--findings", default=None, help="append reproducers to this markdown")
    ap.add_argument("--time-limit", type=int, default=180,
                    help="seconds per input (a numba compile on a loaded machine: minutes)")
    ap.add_argument("--head", default=None, help="the commit tested (default: git HEAD)")
    ap.add_argument("--no-shrink", dest="shrink", action="store_false")
    ap.add_argument("--shrink-s", type=float, default=60.0)
    ap.add_argument("--report-every", type=int, default=50)
    ap.add_argument("--memory-gb", type=float, default=4.0,
                    help="data-size limit of a syntax-only campaign (0: none)")
    ap.add_argument("--no-zero-inputs", dest="zero_inputs", action="store_false",
                    help="skip the zero-input check")
    args = ap.parse_args(argv)
    global ZERO_INPUTS
    ZERO_INPUTS = args.zero_inputs
    os.environ.setdefault("NTKC_CACHE_DIR", "/tmp/cache_fuzz")
    out = Path(args.out)
    repro = Path(args.repro_dir) if args.repro_dir else out.with_suffix("") / "repro"
    head = args.head or _head()
    findings = Findings(args.findings, repro, head)
    result = {"head": head, "seed": args.seed, "args": vars(args)}

    def saver(key):
        def save(partial):
            result[key] = partial
            out.write_text(json.dumps(result, indent=1))
        return save

    if args.programs:
        result["kernel"] = kernel_campaign(args, findings, saver("kernel"))
        print("kernel campaign:", json.dumps(result["kernel"]["counts"]), flush=True)
    if args.syntax:
        if args.memory_gb and not args.programs:  # huge sizes in mutated specs: MemoryError
            import resource

            cap = int(args.memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        result["syntax"] = syntax_campaign(args, findings, saver("syntax"))
        print("syntax campaign:", json.dumps(result["syntax"]["counts"]), flush=True)
    result["reproducers"] = {sig: text for sig, text in findings.seen.items()}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} and {len(findings.seen)} reproducer(s) to {repro}")
    for sig, text in sorted(findings.seen.items(), key=lambda kv: len(kv[1])):
        print(f"--- {sig}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
