#!/usr/bin/env python3
"""Per-request costs from a callgrind dump (bench/profile.sh writes them).

`bench/callgrind_top.py DUMP REQUESTS [N]`: instructions, I1 and D1 misses per request for the N
functions with the most instructions of their own (their callees' cost excluded), and the share of
the total. Reads callgrind's format directly (callgrind_annotate 3.19 mixes inclusive costs into its
exclusive view).

`--callers REGEX` / `--callees REGEX` instead: who calls the functions whose name matches, or what
they call, with calls and inclusive instructions per request (e.g. `--callers memcpy` shows which
futures copy what; with `VALGRIND_EXTRA=--dump-instr=yes` in bench/profile.sh the call sites too).
"""
import collections
import re
import sys

COMPRESSED = re.compile(r"\((\d+)\)(?: (.*))?")


class Dump:
    """Self costs per function and inclusive costs per (caller, callee) pair."""

    def __init__(self, path):
        self.names, self.events = {}, []
        self.self_cost = collections.defaultdict(lambda: None)
        self.calls = collections.defaultdict(lambda: [0, 0])  # (caller, callee) -> [calls, Ir]
        fn = callee = None
        pending = None  # calls= seen: the next cost line is that call's inclusive cost
        positions = 1
        for line in open(path):
            line = line.rstrip("\n")
            if line.startswith("positions:"):
                positions = len(line.split()[1:])
            elif line.startswith("events:"):
                self.events = line.split()[1:]
            elif line.startswith("fn="):
                fn = self.name_of(line[3:])
            elif line.startswith("cfn="):
                callee = self.name_of(line[4:])
            elif line.startswith("calls="):
                pending = int(line.split("=")[1].split()[0])
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()[positions:]
                costs = [int(x) for x in parts] + [0] * (len(self.events) - len(parts))
                if pending is not None:
                    pair = self.calls[(fn, callee)]
                    pair[0] += pending
                    pair[1] += costs[0]
                    pending = None
                    continue
                cur = self.self_cost[fn]
                self.self_cost[fn] = costs if cur is None else [a + b for a, b in zip(cur, costs)]

    def name_of(self, text):
        m = COMPRESSED.match(text)
        if not m:
            return text
        if m.group(2):
            self.names[m.group(1)] = m.group(2)
        return self.names.get(m.group(1), text)


def short(name, width=100):
    for _ in range(2):
        name = re.sub(r"<[^<>]*>", "<>", name)
    return name[:width]


def top(dump, requests, n):
    index = {e: i for i, e in enumerate(dump.events)}
    total = [sum(c[i] for c in dump.self_cost.values()) for i in range(len(dump.events))]
    ir = index["Ir"]

    def per(costs, *keys):
        return sum(costs[index[k]] for k in keys if k in index) / requests

    print(f"{'Ir/req':>8} {'share':>6} {'I1mr':>6} {'D1m':>6}  function")
    print(f"{per(total, 'Ir'):8.0f} {100:5.1f}% {per(total, 'I1mr'):6.0f} {per(total, 'D1mr', 'D1mw'):6.0f}  TOTAL")
    for name, costs in sorted(dump.self_cost.items(), key=lambda kv: -kv[1][ir])[:n]:
        print(f"{per(costs, 'Ir'):8.0f} {100 * costs[ir] / total[ir]:5.1f}% {per(costs, 'I1mr'):6.0f} "
              f"{per(costs, 'D1mr', 'D1mw'):6.0f}  {short(name)}")


def edges(dump, requests, n, pattern, side):
    """Calls into (side 1: callers of) or out of (side 0: callees of) the functions matching `pattern`."""
    rows = [(pair, c) for pair, c in dump.calls.items() if pair[side] and re.search(pattern, pair[side])]
    print(f"{'Ir/req':>8} {'calls':>6}  {'caller':60}  callee")
    for (caller, callee), (calls, ir) in sorted(rows, key=lambda kv: -kv[1][1])[:n]:
        print(f"{ir / requests:8.0f} {calls / requests:6.2f}  {short(caller, 60):60}  {short(callee, 60)}")


def main():
    args = sys.argv[1:]
    mode = None
    if args and args[0] in ("--callers", "--callees"):
        mode, pattern, args = args[0], args[1], args[2:]
    path, requests = args[0], int(args[1])
    n = int(args[2]) if len(args) > 2 else 40
    dump = Dump(path)
    if mode == "--callers":
        edges(dump, requests, n, pattern, side=1)
    elif mode == "--callees":
        edges(dump, requests, n, pattern, side=0)
    else:
        top(dump, requests, n)


main()
