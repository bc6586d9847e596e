"""Do the H200 runs of this folder reproduce the CPU runs of results/bartunov-mnist?

Same configurations (the run ids match), other hardware and kernels, so not bit
for bit: this prints each cell's best test error on both, mean over its seeds,
and how far apart they are. Writes gpu_vs_cpu.md beside this file.

    python results/bartunov-mnist-robust/checks/gpu_vs_cpu.py
"""
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, ROOT)

from benchmark.tables import load_runs  # noqa: E402


def best_errors(folder):
    runs, _ = load_runs([os.path.join(ROOT, folder)])
    runs = runs[runs.status == "complete"]
    return {key: dict(zip(part.seed, part["best"]))
            for key, part in runs.groupby(["arch", "label"])}


def main():
    gpu, cpu = best_errors("results/bartunov-mnist-robust"), best_errors("results/bartunov-mnist")
    lines = ["| arch | rule | H200 | CPU | H200 - CPU | seeds identical |", "|---|---|---|---|---|---|"]
    diffs = []
    for key in sorted(gpu):
        if key not in cpu or sorted(gpu[key]) != sorted(cpu[key]):
            continue  # compare cells with the same seeds on both
        mean_gpu, mean_cpu = statistics.mean(gpu[key].values()), statistics.mean(cpu[key].values())
        diffs.append(mean_gpu - mean_cpu)
        same = sum(gpu[key][s] == cpu[key][s] for s in gpu[key])
        lines.append(f"| {key[0]} | {key[1]} | {mean_gpu:.2f} | {mean_cpu:.2f} | {mean_gpu - mean_cpu:+.2f} | "
                     f"{same}/{len(gpu[key])} |")
    abs_diffs = sorted(abs(d) for d in diffs)
    summary = (f"{len(diffs)} cells with the same seeds on both: mean difference {statistics.mean(diffs):+.3f}, "
               f"mean absolute {statistics.mean(abs_diffs):.3f}, largest {abs_diffs[-1]:.2f} percentage points "
               f"(best test error, mean over seeds).")
    text = "# Best test error (%) of the same configurations on the H200 and on the CPU\n\n" + summary + "\n\n"
    text += "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "gpu_vs_cpu.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(summary)


if __name__ == "__main__":
    main()
