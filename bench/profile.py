"""Profile one gateway worker under wrk with py-spy: `python -m bench.profile get_query [--seconds 10]`.

Writes the collapsed stacks (for a flame graph) beside the results and prints the functions that cost the most,
by own time and by time including their callees.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import run


def summarise(collapsed: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=[s.key for s in run.SCENARIOS])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    parser.add_argument("--output", default=str(run.RESULTS / "profile"))
    args = parser.parse_args()
    run.ensure_tools()
    scenario = next(s for s in run.SCENARIOS if s.key == args.scenario)
    procs = run.Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp_name:
        tmp = Path(tmp_name)
        cpus = os.cpu_count() or 2
        bench = run.Bench(str(cpus - 1), "0", f"0-{cpus - 1}", args.seconds, 1.0, tmp, procs)
        try:
            (tmp / "big.bin").write_bytes(os.urandom(run.BIG_SIZE))
            port = run.free_port()
            conf = run.nginx_config(
                tmp, "upstream", run.UPSTREAM.format(port=port, tmp=tmp, small=run.SMALL_BODY)
            )
            nginx = run._which("nginx") or "nginx"
            up = procs.start(
                "nginx-upstream", [nginx, "-e", str(tmp / "up.error.log"), "-c", str(conf)], tmp / "up.log"
            )
            run.wait_http(f"http://127.0.0.1:{port}/", up)
            proc, gw_port, _ = run.start_gateway(bench, port, 1)
            base = f"http://127.0.0.1:{gw_port}"
            bench.wrk(base, scenario.shape, 2)  # warm the cache and the pools before sampling
            out = Path(args.output + f"-{args.scenario}.collapsed")
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = [
                "py-spy",
                "record",
                "--pid",
                str(proc.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(out),
            ]
            # Native frames need the process paused while sampling; Python frames do not.
            spy.append("--native" if args.native else "--nonblocking")
            bin_dir = Path(sys.executable).parent
            spy[0] = str(bin_dir / "py-spy") if (bin_dir / "py-spy").exists() else "py-spy"
            load: dict[str, object] = {}
            worker = threading.Thread(
                target=lambda: load.update(bench.wrk(base, scenario.shape, args.seconds + 1)), daemon=True
            )
            worker.start()
            subprocess.run(spy, check=True, stdout=subprocess.DEVNULL)
            worker.join()
            summary = (
                f"{args.scenario}: {load['rps']:,.0f} req/s, p50 {load['p50_ms']:.2f} ms, "
                f"p99 {load['p99_ms']:.2f} ms while sampled\n{summarise(out, args.top)}\n"
            )
            out.with_suffix(".txt").write_text(summary)
            print(summary)
            print(f"collapsed stacks: {out}; summary: {out.with_suffix('.txt')}")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
