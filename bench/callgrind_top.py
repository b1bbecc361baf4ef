#!/usr/bin/env python3
"""Self cost per request of the costliest functions in a callgrind dump.

`bench/callgrind_top.py DUMP REQUESTS [N]`: instructions, I1 and D1 misses per
request for the N functions with the most instructions of their own (their
callees' cost excluded), and the share of the total. Reads callgrind's format
directly (callgrind_annotate 3.19 mixes inclusive costs into its exclusive view).
"""
import collections
import re
import sys


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    names, events, self_cost = {}, [], collections.defaultdict(lambda: None)
    fn = None
    skip_next = False
    compressed = re.compile(r"\((\d+)\)(?: (.*))?")

    def name_of(text):
        m = compressed.match(text)
        if not m:
            return text
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), text)

    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = name_of(line[3:])
        elif line.startswith("cfn="):
            name_of(line[4:])  # defines the compressed name
        elif line.startswith("calls="):
            skip_next = True  # the next cost line is the call's inclusive cost
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            if skip_next:
                skip_next = False
                continue
            parts = line.split()[1:]
            costs = [int(x) for x in parts] + [0] * (len(events) - len(parts))
            cur = self_cost[fn]
            self_cost[fn] = costs if cur is None else [a + b for a, b in zip(cur, costs)]
    index = {e: i for i, e in enumerate(events)}
    total = [sum(c[i] for c in self_cost.values()) for i in range(len(events))]
    ir = index["Ir"]

    def per(costs, *keys):
        return sum(costs[index[k]] for k in keys if k in index) / requests

    print(f"{'Ir/req':>8} {'share':>6} {'I1mr':>6} {'D1m':>6}  function")
    print(f"{per(total, 'Ir'):8.0f} {100:5.1f}% {per(total, 'I1mr'):6.0f} {per(total, 'D1mr', 'D1mw'):6.0f}  TOTAL")
    for name, costs in sorted(self_cost.items(), key=lambda kv: -kv[1][ir])[:top]:
        short = re.sub(r"<[^<>]*>", "<>", name)
        short = re.sub(r"<[^<>]*>", "<>", short)[:100]
        print(f"{per(costs, 'Ir'):8.0f} {100 * costs[ir] / total[ir]:5.1f}% {per(costs, 'I1mr'):6.0f} "
              f"{per(costs, 'D1mr', 'D1mw'):6.0f}  {short}")


main()
