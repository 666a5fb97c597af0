#!/usr/bin/env python3
"""Prints the tables of README.md from the JSON files `cargo xtask eval --json` wrote in
fashion-mnist/ (no number in README.md comes from anywhere else)."""
import json
import pathlib

here = pathlib.Path(__file__).parent / "fashion-mnist"


def load(name):
    p = here / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


rows = [("pgd", "linf"), ("pgd", "l2"), ("deepfool", "linf"), ("deepfool", "l2"),
        ("ddn", "l2"), ("cw", "l2"), ("noise", "linf"), ("noise", "l2"),
        ("apgd-ce", "linf"), ("apgd-dlr", "linf"), ("apgd-ce", "l2"), ("apgd-dlr", "l2")]
print("| attack | norm | quick | paper | difference |")
print("|---|---|---:|---:|---:|")
for attack, norm in rows:
    q, p = load(f"quick-{attack}-{norm}"), load(f"paper-{attack}-{norm}")
    if not (q and p):
        continue
    a, b = q["accuracy"]["correct"], p["accuracy"]["correct"]
    print(f"| {attack} | {norm} | {a}% | {b}% | {abs(a - b)} |")

print()
print("| budget | abort | robust | broken by both: larger than batch's / smaller / equal | broken only by batch / only by this rule |")
print("|---|---|---:|---|---|")
for preset in ["quick", "paper", "abs"]:
    base = load(f"{preset}-cw-l2") or load(f"{preset}-cw-l2-abort-batch")
    print(f"| {preset} | batch (Foolbox) | {base['accuracy']['correct']} | - | - |")
    for rule in ["per-sample", "never"]:
        o = load(f"{preset}-cw-l2-abort-{rule}")
        if not o:
            continue
        larger = smaller = equal = only_b = only_o = 0
        for rb, ro, db, do in zip(base["robust"], o["robust"], base["distances"], o["distances"]):
            if not rb and not ro:
                if db == 0 and do == 0:
                    continue  # misclassified when clean
                if do > db * 1.0001:
                    larger += 1
                elif do < db / 1.0001:
                    smaller += 1
                else:
                    equal += 1
            elif not rb:
                only_b += 1
            elif not ro:
                only_o += 1
        print(f"| {preset} | {rule} | {o['accuracy']['correct']} | {larger} / {smaller} / {equal} | {only_b} / {only_o} |")
