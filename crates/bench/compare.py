#!/usr/bin/env python3
"""Sets ferry-bench output beside ray_bench.py output from the same sitting.

usage: compare.py FERRY.txt RAY.txt  -> a Markdown table on stdout

Both files hold `name value unit` lines (`#` lines are ignored). The ratio column says how many
times better ferry is: Ray/ferry for times, sizes and counts (lower is better), ferry/Ray for
rates (`/s` units; higher is better).
"""
import sys


def load(path):
    out = {}
    for line in open(path):
        parts = line.split()
        if len(parts) != 3 or line.startswith("#"):
            continue
        try:
            out[parts[0]] = (float(parts[1]), parts[2])
        except ValueError:
            pass
    return out


def fmt(v):
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4g}"


def main():
    ferry, ray = load(sys.argv[1]), load(sys.argv[2])
    print("| figure | unit | ferry | Ray | ferry is |")
    print("|---|---|---:|---:|---:|")
    for name, (fv, unit) in ferry.items():
        if name not in ray:
            print(f"| {name} | {unit} | {fmt(fv)} | n/a | |")
            continue
        rv = ray[name][0]
        higher_better = unit.endswith("/s")
        if fv == 0 or rv == 0:
            ratio = ""
        else:
            gain = fv / rv if higher_better else rv / fv
            ratio = f"{gain:,.1f}× better" if gain >= 1 else f"{1 / gain:,.1f}× worse"
        print(f"| {name} | {unit} | {fmt(fv)} | {fmt(rv)} | {ratio} |")


if __name__ == "__main__":
    main()
