"""Shared pieces of the benchmark scripts: the machine description that heads every result,
writing a result file, and timing helpers that keep compilation apart from running.

Results go to `benchmarks/out/` (git-ignored; `SCORE_SDE_BENCHMARKS_OUT` or a script's `--out`
picks another folder), never to tracked files: `benchmarks/results/` holds the committed figures
the README quotes, copied there by hand.

    text = machine_description()                     # Markdown lines: CPU, cores, devices, versions
    path = write_result("samplers", body, "python -m benchmarks.samplers")
    compiled, seconds = compile_aot(eqx.filter_jit(f), *args)   # ahead-of-time: compile time alone
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import pathlib
import platform
import time

import jax

# Where results are written (ignored by git); the committed copies live in benchmarks/results/.
RESULTS = pathlib.Path(os.environ.get("SCORE_SDE_BENCHMARKS_OUT") or pathlib.Path(__file__).parent / "out")
PACKAGES = ("jax", "jaxlib", "flax", "diffrax", "equinox", "optax")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_description() -> str:
    """Markdown bullet lines naming the machine a result was measured on."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return "\n".join([
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible; load average (1/5/15 min) at start: "
        f"{load_average()}",
        f"- JAX devices: {len(devices)} x {jax.default_backend()} ({', '.join(kinds)})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- measured: {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ])


def write_result(name: str, body: str, command: str, title: str | None = None,
                 directory: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes <directory or benchmarks/out>/<name>.md: a title, the command, the machine, then `body`."""
    directory = pathlib.Path(directory) if directory else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    head = f"# {title or name}\n\n`{command}`\n\n{machine_description()}\n\n"
    path.write_text(head + body.rstrip() + "\n")
    return path


def compile_aot(jitted, *args, **kwargs):
    """(compiled executable, compile seconds) of a `jax.jit` / `eqx.filter_jit` function.

    Lowering and compilation ahead of time measure the compile cost alone, so that the first
    timed call is a pure run (no call has to be repeated to subtract a run from a compile).
    """
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def timed_split(fn, *args, **kwargs):
    """(compile seconds, run seconds, output) of one call with its output blocked on: the compile
    share is what JAX reported compiling during the call (`score_sde.plumbing.timing.Timer`), the run share
    the rest of the wall time. For calls that compile inside (library functions that jit internally)
    where `compile_aot` cannot reach the jitted function."""
    from score_sde.plumbing.timing import Timer

    with Timer() as t:
        out = jax.block_until_ready(fn(*args, **kwargs))
    return t.compile_seconds, t.run_seconds, out


def run_timed(fn, *args, repeats: int = 1):
    """(fastest seconds over `repeats` calls, last output) with outputs blocked on.

    The minimum, not the median: on a shared machine the noise only ever adds time.
    """
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


class Programs:
    """Lowers jitted programs in the calling thread, compiles them concurrently in a thread pool.

    XLA releases the GIL while it compiles, so N programs take about the longest one's compile
    time instead of their sum (what lets the GPU check fit its 5 minutes). Each program's compile
    seconds are measured in its own thread: with several compiling at once they include some
    contention. Errors (in lowering or compiling) are raised by `get`, in the caller's section.

        progs = Programs(workers=8)
        progs.submit("name", eqx.filter_jit(f), *args)
        compiled, seconds = progs.get("name")      # waits for that compilation
    """

    def __init__(self, workers: int):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
        self.futures: dict[str, concurrent.futures.Future] = {}

    def submit(self, name: str, jitted, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        try:
            lowered = jitted.lower(*args, **kwargs)
        except Exception as e:  # raised again by get(name)
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(e)
            self.futures[name] = future
            return
        lower_s = time.perf_counter() - t0

        def work():
            t1 = time.perf_counter()
            return lowered.compile(), lower_s + time.perf_counter() - t1

        self.futures[name] = self.pool.submit(work)

    def get(self, name: str):
        """(compiled executable, lowering + compile seconds) of program `name`."""
        return self.futures[name].result()

    def wait_all(self) -> None:
        concurrent.futures.wait(list(self.futures.values()))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
